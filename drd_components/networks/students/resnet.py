"""Staged ResNet students (2D and 3D) built from MONAI's ResNet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
from monai.networks.nets import ResNet
from torch import nn

from drd_components.networks.students.base import StagedNetwork

__all__ = ["resnet_stage_modules", "StagedResNet", "StagedResNet18"]


def resnet_stage_modules(net: ResNet) -> nn.ModuleList:
    """Split a MONAI ``ResNet`` into its four residual stages; the stem (conv1, norm, act, max-pool)
    is placed in front of ``layer1``. The modules are shared with ``net``, not copied."""
    stem = [net.conv1, net.bn1, net.act]
    if not net.no_max_pool:
        stem.append(net.maxpool)
    return nn.ModuleList([nn.Sequential(*stem, net.layer1), net.layer2, net.layer3, net.layer4])


class StagedResNet(StagedNetwork):
    """A MONAI ``ResNet`` classifier exposed as four stages plus a pooling + linear head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output logits.
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage.
        block_inplanes: channels per stage.
        conv1_t_size: stem kernel size.
        conv1_t_stride: stem stride.
        no_max_pool: drop the stem max-pool (useful for small inputs).
        dropout: dropout before the linear layer.

    Raises:
        ValueError: for invalid ``spatial_dims``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        conv1_t_size: int | Sequence[int] = 7,
        conv1_t_stride: int | Sequence[int] = 2,
        no_max_pool: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        net = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            num_classes=num_classes,
            feed_forward=True,
        )
        self.stages = resnet_stage_modules(net)
        self.pool = net.avgpool
        self.dropout = nn.Dropout(dropout)
        self.fc = net.fc

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = self.pool(features[-1]).flatten(1)
        return self.fc(self.dropout(x))


class StagedResNet18(StagedResNet):
    """ResNet-18 (basic blocks, 2-2-2-2) student; see :class:`StagedResNet` for arguments."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, block="basic", layers=(2, 2, 2, 2), **kwargs)
