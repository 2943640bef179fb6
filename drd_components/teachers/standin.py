"""A small stand-in teacher built on MONAI's ResNet, for tests and the synthetic quickstart.

It is *not* a foundation model. It has the same interface and checkpoint handling as the real
teachers (flat MONAI-``ResNet`` state dict, the layout LVM-Med's official file also uses), so
everything downstream of a teacher can be exercised where no foundation-model weights exist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet

from drd_components.networks.students.resnet import resnet_stage_modules
from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.preprocessing import TeacherPreprocessing

__all__ = ["ResNetStandInTeacher"]


class ResNetStandInTeacher(FrozenTeacher):
    """A MONAI ``ResNet`` used as a frozen teacher; taps the outputs of ``layer1..layer4``.

    For an input of ``S`` pixels per side (after preprocessing) the taps have
    ``block_inplanes[i] * expansion`` channels at ``S/4, S/8, S/16, S/32`` (stem stride 2 and
    max-pool; without the max-pool each is twice as large).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the model's input.
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage.
        block_inplanes: channels per stage.
        spatial_size: input size the teacher resizes to (``None``: keep the bundle's size).
        mean: input normalisation mean (after scaling to ``[0, 1]``).
        std: input normalisation std.
        checkpoint: flat ``ResNet`` state dict file (``fc.*`` keys, if present, are ignored);
            ``None`` leaves random weights (a warning is logged).
        sha256: expected digest of ``checkpoint``.

    Raises:
        CheckpointError: when the checkpoint is missing, fails its checksum or has other keys.
    """

    tap_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] = (32, 64, 128, 256),
        spatial_size: Sequence[int] | int | None = None,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.25,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.net = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,
        )
        # a plain tuple: the modules are registered once, under ``net``
        self.stages = tuple(resnet_stage_modules(self.net))
        self.preprocessing = TeacherPreprocessing(spatial_dims, in_channels, spatial_size, mean, std)
        if checkpoint:
            self.load_official_checkpoint(
                self.net, checkpoint, sha256, key_map=lambda k: None if k.startswith("fc.") else k
            )
        else:
            self.warn_random_weights()
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
