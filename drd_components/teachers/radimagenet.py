"""RadImageNet DenseNet-121 teacher (PyTorch port of the RadImageNet weights).

RadImageNet (Mei et al., Radiology: AI 2022) pre-trained standard ImageNet architectures on 1.35 M
radiology images. The PyTorch release ``RadImageNet_pytorch/DenseNet121.pt`` is a flat
``{name: tensor}`` state dict of torchvision's ``densenet121().features`` wrapped as
``backbone.0`` (725 tensors, 6.95 M parameters, no classifier). Access is gated (request via
radimagenet.com), so there is no stable URL or published checksum: the user supplies the file and
records its SHA-256 once (``drd_components.teachers.checkpoint.sha256sum``).

MONAI's ``DenseNet121(...).features`` has the same graph; two renames map the file onto it (see
:func:`radimagenet_key_map`). torchvision is not needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import check_checkpoint_args
from drd_components.teachers.preprocessing import TeacherPreprocessing

__all__ = ["RadImageNetDenseNet121Teacher", "radimagenet_key_map", "RADIMAGENET_NORMALIZATIONS"]

_PREFIX = "backbone.0."
_DENSE_LAYER = re.compile(r"^(denseblock\d+\.denselayer\d+\.)((?:norm|conv)[12]\..*)$")

#: Normalisations of the ``[0, 1]`` RGB image, as ``(mean, std)`` per RGB channel. The model
#: itself receives BGR (see :class:`_BGRPreprocessing`).
#:
#: * ``"caffe"`` (default): every Keras training script upstream (``imagenet_utils.preprocess_input``
#:   in caffe mode, then ``rescale=1/255``): ``x/255 - mean``, mean = (123.68, 116.779, 103.939)/255
#:   in R, G, B order, no std.
#: * ``"minus_one_one"``: upstream ``pytorch_example.ipynb``: ``(x - 127.5) * 2 / 255``, i.e.
#:   mean 0.5, std 0.5, range [-1, 1].
RADIMAGENET_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "caffe": ((123.68 / 255.0, 116.779 / 255.0, 103.939 / 255.0), (1.0, 1.0, 1.0)),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def radimagenet_key_map(key: str) -> str:
    """Map a ``DenseNet121.pt`` key to a key of MONAI's ``DenseNet121().features``.

    ``backbone.0.<k>`` loses its prefix, and inside dense layers ``layers.`` is inserted
    (``denseblockB.denselayerL.norm1.weight`` -> ``denseblockB.denselayerL.layers.norm1.weight``;
    the same for ``conv1``, ``norm2`` and ``conv2``). Stem, transition and ``norm5`` names are the
    same in both. A key without the prefix is returned unchanged and reported as unexpected.

    Args:
        key: a key of the file.

    Returns:
        the MONAI key.
    """
    if not key.startswith(_PREFIX):
        return key
    key = key[len(_PREFIX) :]
    match = _DENSE_LAYER.match(key)
    if match:
        key = f"{match.group(1)}layers.{match.group(2)}"
    return key


class _BGRPreprocessing(TeacherPreprocessing):
    """:class:`TeacherPreprocessing` followed by RGB -> BGR (RadImageNet was trained on BGR input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flip(1)


class RadImageNetDenseNet121Teacher(FrozenTeacher):
    """Frozen RadImageNet DenseNet-121 exposing the outputs of its four dense blocks.

    The network is ``monai.networks.nets.DenseNet121(spatial_dims=2, in_channels=3).features``
    (torchvision DenseNet-121: growth 32, bn_size 4, 64 initial features, blocks 6/12/24/16).
    The file's keys are renamed by :func:`radimagenet_key_map` and loaded strictly; all 725 keys
    map one to one (``num_batches_tracked`` counters may be absent).

    Taps: the output of each dense block *before* the following transition (the transitions
    would halve the channels and the resolution), and for the last block the network's final
    features ``relu(norm5(denseblock4))``, as DenseNet's own head sees them. Shapes for the
    default 224 x 224 input:

    ===========  ======================  ======
    tap          shape (B x C x H x W)   stride
    ===========  ======================  ======
    denseblock1  B x 256 x 56 x 56       4
    denseblock2  B x 512 x 28 x 28       8
    denseblock3  B x 1024 x 14 x 14      16
    denseblock4  B x 1024 x 7 x 7        32  (after norm5 + ReLU)
    ===========  ======================  ======

    Preprocessing: grey images are replicated to 3 channels, the ``[0, 1]`` image is resized
    (bilinear) to ``spatial_size``, normalised per ``normalization`` and finally flipped from RGB
    to BGR, the channel order RadImageNet was trained with (Keras/cv2 loaders); for grey images
    the flip changes nothing.

    Args:
        checkpoint: the user-supplied ``DenseNet121.pt``; ``None`` builds random weights (tests
            and dry runs only) and logs a warning.
        sha256: the SHA-256 the user recorded for the file (there is no official checksum);
            verified before the file is read.
        spatial_size: model input size (int or ``(H, W)``), 224 by default (the PyTorch
            example's size; the Keras scripts fine-tune at 256).
        normalization: ``"caffe"`` (default, the Keras training convention) or
            ``"minus_one_one"`` (upstream's PyTorch example); see :data:`RADIMAGENET_NORMALIZATIONS`.

    Raises:
        CheckpointError: the file is missing, fails the checksum, or its keys/shapes differ from
            the model (the message lists the offending keys, in MONAI naming).
        ValueError: unknown ``normalization``, or ``sha256`` without ``checkpoint``.
    """

    spatial_dims = 2
    tap_names = ("denseblock1", "denseblock2", "denseblock3", "denseblock4")

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = 224,
        normalization: str = "caffe",
    ) -> None:
        super().__init__()
        if normalization not in RADIMAGENET_NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {sorted(RADIMAGENET_NORMALIZATIONS)}, got {normalization!r}."
            )
        check_checkpoint_args(checkpoint, sha256)
        mean, std = RADIMAGENET_NORMALIZATIONS[normalization]
        self.normalization = normalization
        self.preprocessing = _BGRPreprocessing(
            spatial_dims=2, in_channels=3, spatial_size=spatial_size, mean=mean, std=std
        )
        self.features = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1).features
        if checkpoint is not None:
            self.load_official_checkpoint(
                self.features, checkpoint, sha256=sha256, container_keys=("state_dict",), key_map=radimagenet_key_map
            )
        else:
            self.warn_random_weights()
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Dense-block outputs for a preprocessed ``B x 3 x H x W`` (BGR) input."""
        outs = []
        for name, module in self.features.named_children():
            x = module(x)
            if name.startswith("denseblock") and name != "denseblock4":
                outs.append(x)
        outs.append(F.relu(x))  # x = norm5(denseblock4(...))
        return outs
