"""A U-Net with a ShuffleNetV2 encoder (2D), built from MONAI blocks (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from drd_components.networks.students.segmentation import StagedSegmentationNetwork

__all__ = ["channel_shuffle", "ShuffleV2Block", "StagedShuffleNetV2UNet", "SHUFFLENET_V2_WIDTHS"]

#: stage output channels of ShuffleNetV2 per width multiplier (Ma et al., ECCV 2018, Table 5).
SHUFFLENET_V2_WIDTHS = {
    "0.5x": (24, 48, 96, 192),
    "1.0x": (24, 116, 232, 464),
    "1.5x": (24, 176, 352, 704),
    "2.0x": (24, 244, 488, 976),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (ShuffleNet's channel shuffle)."""
    b, c, h, w = x.shape
    x = x.reshape(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.reshape(b, c, h, w)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> Convolution:
    return Convolution(
        spatial_dims=2,
        in_channels=in_ch,
        out_channels=out_ch,
        strides=stride,
        kernel_size=kernel,
        groups=groups,
        bias=False,
        norm="batch",
        act=("relu", {"inplace": True}) if act else None,
        adn_ordering="NA",
    )


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit (Ma et al., ECCV 2018, Fig. 3c/d).

    Stride 1: split the channels in half, transform one half (1x1 conv, 3x3 depthwise, 1x1 conv),
    concatenate, shuffle. Stride 2: both branches see the whole input and downsample; the output
    has ``out_channels``.

    Args:
        in_channels: input channels.
        out_channels: output channels (even).
        stride: 1 or 2.

    Raises:
        ValueError: for an odd ``out_channels``, a stride other than 1/2, or a stride-1 unit whose
            channels change.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}.")
        if out_channels % 2:
            raise ValueError(f"out_channels must be even, got {out_channels}.")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 ShuffleNetV2 unit keeps its channel count.")
        self.stride = stride
        branch = out_channels // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                _conv(in_channels, in_channels, 3, stride, groups=in_channels, act=False),
                _conv(in_channels, branch, 1),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            _conv(in_channels if stride == 2 else branch, branch, 1),
            _conv(branch, branch, 3, stride, groups=branch, act=False),
            _conv(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def _shuffle_stage(in_ch: int, out_ch: int, repeats: int) -> nn.Sequential:
    return nn.Sequential(ShuffleV2Block(in_ch, out_ch, 2), *[ShuffleV2Block(out_ch, out_ch, 1) for _ in range(repeats - 1)])


class _UpFuse(nn.Module):
    """Upsample by ``scale`` (bilinear, 1x1 conv to ``out_channels``), concatenate the skip, two
    3x3 conv-norm-act layers (MONAI ``UpSample`` + ``TwoConv``)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: int, norm, act) -> None:
        super().__init__()
        self.up = UpSample(2, in_channels, out_channels, scale_factor=scale, mode="nontrainable", interp_mode="bilinear", align_corners=False)
        self.convs = TwoConv(2, out_channels + skip_channels, out_channels, act, norm, False, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat((self.up(x), skip), dim=1))


class StagedShuffleNetV2UNet(StagedSegmentationNetwork):
    """U-Net whose encoder is ShuffleNetV2, as 4 stages plus a decoder head (2D).

    ==== ================================================ ======= ===============
    i    stage                                            stride  channels (1.0x)
    ==== ================================================ ======= ===============
    0    conv 3x3 /2 -> BN -> ReLU                         2       24
    1    max-pool /2 -> ShuffleNetV2 stage 2 (4 units)     8       116
    2    ShuffleNetV2 stage 3 (8 units)                    16      232
    3    ShuffleNetV2 stage 4 (4 units) -> conv 1x1        32      464 (``last_channels``)
    ==== ================================================ ======= ===============

    The decoder upsamples the deepest map and fuses the skips of stages 2, 1 and 0 (bilinear
    upsampling + 1x1 conv, concatenation, two 3x3 conv-norm-act), then upsamples to the input
    size with one more conv-norm-act and a 1x1 classifier. Inputs must be multiples of 32.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        width: ShuffleNetV2 width multiplier (``"0.5x"``, ``"1.0x"``, ``"1.5x"``, ``"2.0x"``) or
            explicit stage channels ``(c0, c1, c2, c3)``.
        stage_repeats: units per ShuffleNetV2 stage.
        last_channels: channels of the final 1x1 conv of stage 3 (ShuffleNetV2's ``conv5``;
            ``None`` drops it).
        decoder_channels: channels of the 4 decoder levels (at strides 16, 8, 2, 1).
        norm: MONAI norm spec of the decoder.
        act: MONAI activation spec of the decoder.
        checkpoint_hybrid: recompute hybrid paths in the backward pass to save memory.

    Raises:
        ValueError: for an unknown width or lists of the wrong length.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: str | Sequence[int] = "1.0x",
        stage_repeats: Sequence[int] = (4, 8, 4),
        last_channels: int | None = None,
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        checkpoint_hybrid: bool = False,
    ) -> None:
        super().__init__()
        widths = SHUFFLENET_V2_WIDTHS.get(width) if isinstance(width, str) else tuple(width)
        if widths is None or len(widths) != 4:
            raise ValueError(f"width must be one of {sorted(SHUFFLENET_V2_WIDTHS)} or 4 channel counts, got {width}.")
        if len(stage_repeats) != 3 or len(decoder_channels) != 4:
            raise ValueError("stage_repeats needs 3 entries and decoder_channels 4.")
        self.spatial_dims = 2
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.checkpoint_hybrid = checkpoint_hybrid
        c0, c1, c2, c3 = widths
        stage3: list[nn.Module] = [_shuffle_stage(c2, c3, stage_repeats[2])]
        deep = c3
        if last_channels:
            stage3.append(_conv(c3, last_channels, 1))
            deep = last_channels
        self.stages = nn.ModuleList(
            [
                _conv(in_channels, c0, 3, 2),
                nn.Sequential(nn.MaxPool2d(3, 2, 1), _shuffle_stage(c0, c1, stage_repeats[0])),
                _shuffle_stage(c1, c2, stage_repeats[1]),
                nn.Sequential(*stage3),
            ]
        )
        d3, d2, d1, d0 = decoder_channels
        self.up_blocks = nn.ModuleList(
            [
                _UpFuse(deep, c2, d3, 2, norm, act),
                _UpFuse(d3, c1, d2, 2, norm, act),
                _UpFuse(d2, c0, d1, 4, norm, act),
            ]
        )
        self.final_up = UpSample(2, d1, d0, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=False)
        self.final_conv = Convolution(2, d0, d0, kernel_size=3, norm=norm, act=act, adn_ordering="NA", bias=False)
        self.classifier = Convolution(2, d0, out_channels, kernel_size=1, conv_only=True, bias=True)

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        """Decode the stage-3 map with the skips of stages 2, 1 and 0, then upsample to the input size."""
        x = features[3]
        for i, up in enumerate(self.up_blocks):
            x = up(x, features[2 - i])
        return self.classifier(self.final_conv(self.final_up(x)))
