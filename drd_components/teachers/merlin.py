"""Merlin teacher: the I3D ResNet-152 image encoder of the Merlin 3D CT vision-language model.

Merlin (Blankemeier et al., 2024) pairs an inflated (I3D) ResNet-152 with a Clinical-Longformer
text encoder. The default checkpoint on Hugging Face ``stanfordmimi/Merlin``,
``i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt``, is a flat state
dict of the whole model (1208 tensors): ``logit_scale``, the image encoder under
``encode_image.i3_resnet.`` (930 trunk tensors plus two 1x1x1 Conv3d heads, ``classifier``
[1692 EHR phenotypes] and ``contrastive_head`` [512]) and the text tower under ``encode_text.``.

MONAI's 3D ``ResNet`` with the arguments below has exactly the 930 trunk keys after stripping the
prefix; the teacher adds the two heads so that they, too, are loaded with strict shape checks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial

import torch
from monai.networks.nets import ResNet
from torch import nn

from drd_components.networks.students.resnet import resnet_stage_modules
from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import (
    check_checkpoint_args,
    extract_state_dict,
    init_context,
    load_checkpoint_file,
    load_state_dict_strict,
    materialize_for_load,
)
from drd_components.teachers.preprocessing import TeacherPreprocessing

__all__ = ["MerlinTeacher", "merlin_key_map", "MERLIN_URL", "MERLIN_IMAGE_PREFIX"]

logger = logging.getLogger(__name__)

MERLIN_URL = (
    "https://huggingface.co/stanfordmimi/Merlin/resolve/main/"
    "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
)
MERLIN_IMAGE_PREFIX = "encode_image.i3_resnet."
_HEADS = ("classifier", "contrastive_head")


def merlin_key_map(key: str, keep_heads: bool = True) -> str | None:
    """Map a key of an official Merlin file to a key of the teacher's I3D ResNet.

    * ``encode_image.i3_resnet.<k>`` becomes ``<k>``;
    * ``logit_scale`` and every ``encode_text.*`` key (the text tower) are dropped on purpose;
    * any other key is kept unchanged: the bare I3ResNet layout of the five-year-prediction file
      (``conv1.weight``, ...) then matches, and a key of neither layout is reported as unexpected;
    * with ``keep_heads=False`` the ``classifier.*`` / ``contrastive_head.*`` keys are dropped too.

    Args:
        key: a key of the file.
        keep_heads: whether the teacher holds the two projection heads.

    Returns:
        the model key, or ``None`` for a dropped key.
    """
    if key.startswith(MERLIN_IMAGE_PREFIX):
        key = key[len(MERLIN_IMAGE_PREFIX) :]
    elif key == "logit_scale" or key.startswith("encode_text."):
        return None
    if not keep_heads and key.split(".", 1)[0] in _HEADS:
        return None
    return key


class _MerlinI3ResNet(ResNet):
    """MONAI 3D ResNet-152 in Merlin's I3D configuration, plus Merlin's two Conv3d heads."""

    def __init__(self, keep_heads: bool, num_phenotypes: int, contrastive_dim: int = 512) -> None:
        super().__init__(
            block="bottleneck",
            layers=[3, 8, 36, 3],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=3,
            n_input_channels=3,
            conv1_t_size=(3, 7, 7),
            conv1_t_stride=(1, 2, 2),
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )
        if keep_heads:
            self.classifier = nn.Conv3d(2048, num_phenotypes, kernel_size=1)
            self.contrastive_head = nn.Conv3d(2048, contrastive_dim, kernel_size=1)


class MerlinTeacher(FrozenTeacher):
    """Frozen Merlin I3D ResNet-152 (3D CT) exposing ``layer1`` .. ``layer4``.

    The trunk is ``monai.networks.nets.ResNet(block="bottleneck", layers=[3, 8, 36, 3],
    block_inplanes=[64, 128, 256, 512], spatial_dims=3, n_input_channels=3,
    conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2), shortcut_type="B", bias_downsample=False,
    feed_forward=False)``: Merlin's ImageNet ResNet-152 inflated to 3D (3x3x3 max pool and
    bottleneck strides in all three dimensions). Loading keeps ``encode_image.i3_resnet.*``
    (prefix stripped), drops ``logit_scale`` and ``encode_text.*`` and fails on anything else
    (see :func:`merlin_key_map`); ``num_batches_tracked`` counters may be absent.

    **Heads.** By default the teacher also holds Merlin's ``classifier`` (1692 phenotypes) and
    ``contrastive_head`` (512) 1x1x1 convolutions (4.5 M parameters), so every image key of the
    file is loaded with a strict shape check. They are not used by the taps;
    ``keep_heads=False`` drops them (and their keys). The five-year disease-prediction file
    (bare I3ResNet keys, ``classifier`` with 6 outputs) loads with ``num_phenotypes=6``.

    **Axis order.** Like upstream Merlin and MONAI's transforms, the input is
    ``B x C x H x W x D`` in RAS orientation (x, y, z; D is the slice axis). Internally the volume
    is permuted to ``B x 3 x D x H x W`` (the grey channel repeated, as upstream does) and every
    tap is permuted back, so the returned maps are ``B x C x H' x W' x D'`` and align with the
    student's features of the same volume.

    **Preprocessing** (``merlin/data/monai_transforms.py``): Merlin saw CT resampled to
    1.5 x 1.5 x 3 mm, windowed from HU [-1000, 1000] to [0, 1] (no mean/std) and padded/cropped to
    224 x 224 x 160. Resampling to that spacing is the bundle's job; the teacher clips and
    rescales the HU window (``hu_window``; pass ``None`` for non-CT data already in [0, 1], e.g.
    MRA) and resizes (trilinear) to ``spatial_size``. Several channels are averaged to one.

    Tapped layers and their shapes (``B x C x H x W x D``) for the default input
    224 x 224 x 160, and for a small test size 64 x 64 x 32:

    ========  ===========================  ========================  ==============
    tap       224 x 224 x 160              64 x 64 x 32              stride (H,W,D)
    ========  ===========================  ========================  ==============
    layer1    B x 256 x 56 x 56 x 80       B x 256 x 16 x 16 x 16    (4, 4, 2)
    layer2    B x 512 x 28 x 28 x 40       B x 512 x 8 x 8 x 8       (8, 8, 4)
    layer3    B x 1024 x 14 x 14 x 20      B x 1024 x 4 x 4 x 4      (16, 16, 8)
    layer4    B x 2048 x 7 x 7 x 10        B x 2048 x 2 x 2 x 2      (32, 32, 16)
    ========  ===========================  ========================  ==============

    ``spatial_size`` must be at least 32 x 32 x 16 for ``layer4`` to be non-empty. At the default
    size one forward holds several GB of activations on CPU (``layer1`` alone is 257 MB per
    sample in fp32).

    Args:
        checkpoint: path of the official Merlin file; ``None`` builds random weights (tests and
            dry runs only) and logs a warning.
        sha256: expected SHA-256 of ``checkpoint``; the file is checked and read *before* the
            117 M-parameter network is built, so a bad file fails fast.
        spatial_size: model input size ``(H, W, D)`` (an int means a cube), default
            ``(224, 224, 160)``.
        hu_window: CT window in HU mapped to [0, 1]; ``None`` expects input already in [0, 1].
        keep_heads: hold (and strictly load) the two projection heads.
        num_phenotypes: output channels of ``classifier`` (1692 in the default file, 6 in the
            five-year file).

    Raises:
        CheckpointError: the file is missing, fails the checksum, or its keys/shapes differ from
            the model (the message lists the offending keys, without the image prefix).
        ValueError: ``sha256`` without ``checkpoint``, or a ``spatial_size`` below 32 x 32 x 16.
    """

    spatial_dims = 3
    tap_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = (224, 224, 160),
        hu_window: tuple[float, float] | None = (-1000.0, 1000.0),
        keep_heads: bool = True,
        num_phenotypes: int = 1692,
    ) -> None:
        super().__init__()
        check_checkpoint_args(checkpoint, sha256)
        size = (spatial_size,) * 3 if isinstance(spatial_size, int) else tuple(spatial_size)
        if len(size) != 3 or size[0] < 32 or size[1] < 32 or size[2] < 16:
            raise ValueError(f"spatial_size (H, W, D) must be at least (32, 32, 16), got {spatial_size}.")
        self.preprocessing = TeacherPreprocessing(spatial_dims=3, in_channels=1, spatial_size=size, window=hu_window)
        # read (and checksum) the file before building the large network: a bad file fails fast.
        state = None
        if checkpoint is not None:
            obj = load_checkpoint_file(checkpoint, sha256=sha256)
            state = extract_state_dict(obj, ("state_dict",), path=str(checkpoint))
            del obj
        # with a file, every tensor comes from it (strict load), so the random initialisation of
        # 122 M parameters is skipped: build on the meta device and allocate uninitialised storage.
        with init_context(state is not None):
            self.i3_resnet = _MerlinI3ResNet(keep_heads=keep_heads, num_phenotypes=num_phenotypes)
        if state is not None:
            materialize_for_load(self.i3_resnet)
            key_map = partial(merlin_key_map, keep_heads=keep_heads)
            load_state_dict_strict(self.i3_resnet, state, key_map=key_map, source=f"'{checkpoint}'")
            n_loaded = len(self.i3_resnet.state_dict())
            logger.info("MerlinTeacher: loaded %d of the %d tensors in %s", n_loaded, len(state), checkpoint)
        else:
            self.warn_random_weights()
        # stem + layer1, layer2, layer3, layer4 (modules shared with ``i3_resnet``); a plain tuple,
        # so they are not registered, and saved, a second time
        self._stages = tuple(resnet_stage_modules(self.i3_resnet))
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``layer1`` .. ``layer4`` maps (``B x C x H' x W' x D'``) for a preprocessed ``B x 1 x H x W x D`` input."""
        x = x.permute(0, 1, 4, 2, 3)  # B x C x H x W x D -> B x C x D x H x W (upstream's internal order)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1, -1)
        outs = []
        for stage in self._stages:
            x = stage(x)
            outs.append(x.permute(0, 1, 3, 4, 2))  # back to B x C x H x W x D
        return outs
