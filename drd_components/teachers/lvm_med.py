"""LVM-Med ResNet-50 teacher.

LVM-Med (Nguyen et al., NeurIPS 2023) pre-trained a ResNet-50 with graph-matching
self-supervision on 1.3 M medical images. The released ``lvmmed_resnet.torch`` is a flat
``{name: tensor}`` state dict with torchvision ResNet-50 names and no prefix (318 tensors,
23.51 M parameters). Upstream code implies the file has no ``fc``; an ``fc.weight``/``fc.bias``
pair is nevertheless accepted and ignored, as upstream's own loader does. Download (Google Drive,
links in the upstream README) is done by the user; the licence is non-commercial.

MONAI's ``ResNet`` with the arguments below has exactly the 318 keys, with no renaming.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet

from drd_components.networks.students.resnet import resnet_stage_modules
from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import check_checkpoint_args
from drd_components.teachers.preprocessing import TeacherPreprocessing

__all__ = ["LVMMedResNet50Teacher", "lvm_med_key_map", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IGNORED_KEYS = frozenset({"fc.weight", "fc.bias"})


def lvm_med_key_map(key: str) -> str | None:
    """Keep every key of ``lvmmed_resnet.torch`` unchanged, except a classifier ``fc.*`` (dropped).

    Args:
        key: a key of the file.

    Returns:
        the model key, or ``None`` for ``fc.weight`` / ``fc.bias``.
    """
    return None if key in _IGNORED_KEYS else key


class LVMMedResNet50Teacher(FrozenTeacher):
    """Frozen LVM-Med ResNet-50 exposing ``layer1`` .. ``layer4``.

    The network is ``monai.networks.nets.ResNet(block="bottleneck", layers=[3, 4, 6, 3],
    block_inplanes=[64, 128, 256, 512], spatial_dims=2, n_input_channels=3, conv1_t_size=7,
    conv1_t_stride=2, shortcut_type="B", bias_downsample=False, feed_forward=False)``, i.e.
    torchvision's ResNet-50 v1.5 without ``fc``. Loading is strict (``num_batches_tracked``
    counters may be absent); ``fc.*`` keys in the file are ignored on purpose.

    Preprocessing (upstream classification convention, also SMP's settings for
    ``lvm-med-resnet``): grey images are replicated to 3 channels, the ``[0, 1]`` image is resized
    (bilinear) to ``spatial_size`` and normalised with the ImageNet mean/std.

    Tapped layers and their shapes for the default 224 x 224 input:

    ========  ======================  ======
    tap       shape (B x C x H x W)   stride
    ========  ======================  ======
    layer1    B x 256 x 56 x 56       4
    layer2    B x 512 x 28 x 28       8
    layer3    B x 1024 x 14 x 14      16
    layer4    B x 2048 x 7 x 7        32
    ========  ======================  ======

    Args:
        checkpoint: path of ``lvmmed_resnet.torch``; ``None`` builds random weights (tests and
            dry runs only) and logs a warning.
        sha256: expected SHA-256 of ``checkpoint``, verified before it is read.
        spatial_size: model input size (int or ``(H, W)``), 224 by default.

    Raises:
        CheckpointError: the file is missing, fails the checksum, or its keys/shapes differ from
            the model (the message lists the offending keys).
        ValueError: ``sha256`` without ``checkpoint``.
    """

    spatial_dims = 2
    tap_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = 224,
    ) -> None:
        super().__init__()
        check_checkpoint_args(checkpoint, sha256)
        self.preprocessing = TeacherPreprocessing(
            spatial_dims=2, in_channels=3, spatial_size=spatial_size, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        self.encoder = ResNet(
            block="bottleneck",
            layers=[3, 4, 6, 3],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=3,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )
        if checkpoint is not None:
            self.load_official_checkpoint(
                self.encoder, checkpoint, sha256=sha256, container_keys=("state_dict",), key_map=lvm_med_key_map
            )
        else:
            self.warn_random_weights()
        # stem + layer1, layer2, layer3, layer4 (modules shared with ``encoder``); a plain tuple, so
        # they are not registered, and saved, a second time
        self._stages = tuple(resnet_stage_modules(self.encoder))
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``layer1`` .. ``layer4`` maps for a preprocessed ``B x 3 x H x W`` input."""
        outs = []
        for stage in self._stages:
            x = stage(x)
            outs.append(x)
        return outs
