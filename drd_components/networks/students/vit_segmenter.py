"""A ViT-Tiny segmenter (2D): patch-token encoder in stages plus a light convolutional decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock, UpSample
from torch import nn

from drd_components.networks.students.segmentation import StagedSegmentationNetwork

__all__ = ["Attention", "ViTBlock", "ViTStage", "StagedViTSegmenter", "StagedViTTinySegmenter"]


class Attention(nn.Module):
    """Multi-head self-attention on ``B x N x C`` tokens (``scaled_dot_product_attention``).

    Args:
        dim: token width.
        num_heads: heads (``dim`` must be divisible by it).
        qkv_bias: bias of the qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (MONAI ``MLPBlock``).

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: bias of the qkv projection.
        dropout: MLP dropout.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), dropout_rate=dropout, act="GELU", dropout_mode="vit")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTStage(nn.Module):
    """A run of transformer blocks that reads and writes channels-first token *maps*
    (``B x C x h x w``), so every stage output is a feature map a projector can target.

    The first stage also holds the patch embedding (a ``patch x patch`` strided convolution) and
    the learnable position embedding, resized bicubically when the token grid differs from the one
    it was made for.

    Args:
        blocks: the transformer blocks.
        embed: patch embedding (first stage only).
        pos_embed: ``1 x C x gh x gw`` position embedding (first stage only).
    """

    def __init__(self, blocks: Sequence[nn.Module], embed: nn.Module | None = None, pos_embed: nn.Parameter | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.embed = embed if embed is not None else nn.Identity()
        self.has_embed = embed is not None
        if pos_embed is not None:
            self.pos_embed = pos_embed
        else:
            self.register_parameter("pos_embed", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        pos = self.pos_embed
        if pos is not None:
            if pos.shape[2:] != x.shape[2:]:
                pos = F.interpolate(pos, size=[int(x.shape[2]), int(x.shape[3])], mode="bicubic", align_corners=False)
            x = x + pos
        b, c, h, w = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``B x C x H x W`` map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class StagedViTSegmenter(StagedSegmentationNetwork):
    """Plain ViT encoder (no class token) split into ``num_stages`` groups of blocks, with a light
    convolutional decoder (2D).

    Every stage output is the token map ``B x embed_dim x H/p x W/p`` after its blocks (stage 0
    includes the ``p x p`` patch embedding and the position embedding). The decoder
    (SETR-MLA-like) layer-norms each stage map, projects it with a 1x1 conv, sums the projections
    into one ``/p`` map and upsamples it to the input size in steps of 2 (bilinear, 3x3
    conv-norm-act), ending in a 1x1 classifier. Inputs must be multiples of ``patch_size``.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        img_size: input size the position embedding is made for (other sizes resize it).
        patch_size: patch side ``p`` (a power of 2).
        embed_dim: token width.
        depth: transformer blocks in all.
        num_heads: attention heads.
        mlp_ratio: MLP width over ``embed_dim``.
        num_stages: stages the blocks are split into (``depth`` divisible by it).
        decoder_channels: width of the fused map; halved at each upsampling step down to
            ``min_decoder_channels``.
        min_decoder_channels: narrowest decoder width.
        dropout: MLP dropout.
        checkpoint_hybrid: recompute hybrid paths in the backward pass to save memory.

    Raises:
        ValueError: for inconsistent sizes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int = 224,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        num_stages: int = 4,
        decoder_channels: int = 128,
        min_decoder_channels: int = 16,
        dropout: float = 0.0,
        checkpoint_hybrid: bool = False,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(size) != 2 or any(s % patch_size for s in size):
            raise ValueError(f"img_size {img_size} must be 2 multiples of patch_size {patch_size}.")
        if depth % num_stages:
            raise ValueError(f"depth {depth} is not divisible by num_stages {num_stages}.")
        if patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of 2, got {patch_size}.")
        self.spatial_dims = 2
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.checkpoint_hybrid = checkpoint_hybrid
        per = depth // num_stages
        grid = (size[0] // patch_size, size[1] // patch_size)
        embed = Convolution(2, in_channels, embed_dim, strides=patch_size, kernel_size=patch_size, conv_only=True, bias=True, padding=0)
        pos = nn.Parameter(torch.zeros(1, embed_dim, *grid))
        nn.init.trunc_normal_(pos, std=0.02)
        stages = []
        for s in range(num_stages):
            blocks = [ViTBlock(embed_dim, num_heads, mlp_ratio, dropout=dropout) for _ in range(per)]
            stages.append(ViTStage(blocks, embed, pos) if s == 0 else ViTStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_norms = nn.ModuleList([_LayerNorm2d(embed_dim) for _ in range(num_stages)])
        self.stage_proj = nn.ModuleList(
            [Convolution(2, embed_dim, decoder_channels, kernel_size=1, conv_only=True, bias=True) for _ in range(num_stages)]
        )
        ups = []
        ch = decoder_channels
        for _ in range(patch_size.bit_length() - 1):
            nxt = max(ch // 2, min_decoder_channels)
            ups.append(
                nn.Sequential(
                    UpSample(2, ch, ch, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=False),
                    Convolution(2, ch, nxt, kernel_size=3, norm="batch", act=("relu", {"inplace": True}), adn_ordering="NA", bias=False),
                )
            )
            ch = nxt
        self.up_blocks = nn.Sequential(*ups)
        self.classifier = Convolution(2, ch, out_channels, kernel_size=1, conv_only=True, bias=True)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_head(self, features: List[torch.Tensor]) -> torch.Tensor:
        """Fuse the layer-normed, projected stage maps and upsample to the input size."""
        fused = self.stage_proj[0](self.stage_norms[0](features[0]))
        for i, (norm, proj) in enumerate(zip(self.stage_norms, self.stage_proj)):
            if i > 0:
                fused = fused + proj(norm(features[i]))
        return self.classifier(self.up_blocks(fused))


class StagedViTTinySegmenter(StagedViTSegmenter):
    """ViT-Tiny (embed 192, 12 blocks, 3 heads, patch 16) segmenter in 4 stages of 3 blocks.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        img_size: input size.
        kwargs: any other :class:`StagedViTSegmenter` argument.
    """

    def __init__(self, in_channels: int, out_channels: int, img_size: Sequence[int] | int = 224, **kwargs) -> None:
        kwargs.setdefault("patch_size", 16)
        kwargs.setdefault("embed_dim", 192)
        kwargs.setdefault("depth", 12)
        kwargs.setdefault("num_heads", 3)
        kwargs.setdefault("num_stages", 4)
        super().__init__(in_channels, out_channels, img_size, **kwargs)
