"""Staged U-Net students (2D and 3D, isotropic or anisotropic) built from MONAI's DynUNet blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

from drd_components.networks.students.segmentation import StagedSegmentationNetwork

__all__ = ["StagedUNet", "StagedUNet3D"]


def _per_level(value: int | Sequence, levels: int, name: str) -> list:
    """Expand a single value to one entry per level, or check a per-level sequence (each entry an
    int or a per-axis sequence)."""
    if isinstance(value, int):
        return [value] * levels
    seq = list(value)
    if len(seq) != levels:
        raise ValueError(f"{name} needs one entry per level ({levels}), got {value}.")
    return [v if isinstance(v, int) else tuple(int(a) for a in v) for v in seq]


class StagedUNet(StagedSegmentationNetwork):
    """A U-Net (nnU-Net / MONAI ``DynUNet`` layout) exposed as ``N`` encoder stages plus a decoder head.

    Encoder stage ``i`` is a MONAI ``UnetBasicBlock`` (conv-norm-act twice; ``UnetResBlock`` with
    ``res_block=True``) whose first convolution has stride ``strides[i]``; stage 0 normally has
    stride 1, so its output (the first skip) is at full resolution. The decoder has one
    ``UnetUpBlock`` per level (transposed convolution with kernel = stride, concatenation with the
    skip, two convolutions) and a 1x1 ``UnetOutBlock``. Per-level ``strides`` and ``kernel_sizes``
    describe anisotropic volumes (e.g. ``[1, 1, 1]`` then ``[2, 2, 1]`` for thick slices).

    The input size must be divisible by the product of the strides along each axis.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        channels: features per level (one per encoder stage).
        strides: stride of each stage's first convolution, one entry per level (an int or a per-axis
            sequence); default ``1`` for stage 0 and ``2`` for the others.
        kernel_sizes: convolution kernel, an int or one entry per level (an int or a per-axis sequence).
        norm: MONAI norm spec.
        act: MONAI activation spec.
        dropout: dropout of every convolution (``None`` for none).
        res_block: residual encoder blocks (``UnetResBlock``).
        checkpoint_hybrid: recompute hybrid paths during the backward pass to save memory
            (see :class:`~drd_components.networks.students.segmentation.StagedSegmentationNetwork`).

    Raises:
        ValueError: for invalid dimensions or per-level lists of the wrong length.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence | None = None,
        kernel_sizes: int | Sequence = 3,
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float | None = None,
        res_block: bool = False,
        checkpoint_hybrid: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        levels = len(channels)
        if levels < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got channels={list(channels)}.")
        strides_l = _per_level(strides if strides is not None else [1] + [2] * (levels - 1), levels, "strides")
        kernels_l = _per_level(kernel_sizes, levels, "kernel_sizes")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.checkpoint_hybrid = checkpoint_hybrid
        self.strides = strides_l
        block = UnetResBlock if res_block else UnetBasicBlock
        stages = []
        prev = in_channels
        for ch, st, k in zip(channels, strides_l, kernels_l):
            stages.append(block(spatial_dims, prev, ch, kernel_size=k, stride=st, norm_name=norm, act_name=act, dropout=dropout))
            prev = ch
        self.stages = nn.ModuleList(stages)
        ups = []
        for lvl in range(levels - 1, 0, -1):
            ups.append(
                UnetUpBlock(
                    spatial_dims,
                    channels[lvl],
                    channels[lvl - 1],
                    kernel_size=kernels_l[lvl - 1],
                    stride=1,
                    upsample_kernel_size=strides_l[lvl],
                    norm_name=norm,
                    act_name=act,
                    dropout=dropout,
                )
            )
        self.up_blocks = nn.ModuleList(ups)
        self.out_block = UnetOutBlock(spatial_dims, channels[0], out_channels)

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        """Decode: start from the deepest stage output and merge the skips level by level."""
        n = len(features)
        x = features[n - 1]
        for i, up in enumerate(self.up_blocks):
            x = up(x, features[n - 2 - i])
        return self.out_block(x)


class StagedUNet3D(StagedUNet):
    """3D :class:`StagedUNet` (the UNet3D student of the DRD paper's 3D segmentation tasks).

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        kwargs: any other :class:`StagedUNet` argument (``channels``, ``strides``, ...).
    """

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__(3, in_channels, out_channels, **kwargs)
