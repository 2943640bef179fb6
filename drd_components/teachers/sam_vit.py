"""SAM ViT-B image encoder (re-implemented) and the MedSAM teacher.

The encoder follows the layout of ``segment_anything.modeling.ImageEncoderViT`` built with the
ViT-B settings (Kirillov et al., 2023), so that the official ``image_encoder.*`` tensors of
``medsam_vit_b.pth`` and ``sam_vit_b_01ec64.pth`` load with strict key and shape matching:

- ``patch_embed.proj``: 16x16 conv, 3 -> 768, then channels-last tokens;
- ``pos_embed``: absolute position embedding ``[1, 64, 64, 768]`` (the 1024x1024 grid);
- ``blocks.0..11``: pre-norm transformer blocks (LayerNorm eps 1e-6, 12 heads, MLP ratio 4,
  qkv bias) with decomposed relative position embeddings ``attn.rel_pos_h/w``; windowed attention
  (14x14 windows, tables ``[27, 64]``) except the global blocks 2, 5, 8, 11 (tables ``[127, 64]``);
- ``neck``: 1x1 conv 768 -> 256, LayerNorm2d, 3x3 conv 256 -> 256, LayerNorm2d (no conv biases).

The same blocks, with the Medical SAM Adapter's bottleneck adapters switched on, make up
:class:`~drd_components.teachers.medical_sam_adapter.MedicalSAMAdapterTeacher`.

Inputs other than 1024x1024 (any multiple of 16) are supported as in MSA: the absolute position
embedding is resized bicubically to the token grid, and relative position tables whose length does
not match the attention grid are resized linearly (as SAM's own ``get_rel_pos`` does). At 1024x1024
nothing is resized and the encoder computes exactly what upstream computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import init_context, make_view, materialize_for_load, strip_module_prefix
from drd_components.teachers.preprocessing import SampleIntensityNorm, TeacherPreprocessing, check_spatial_size

__all__ = [
    "LayerNorm2d",
    "BottleneckAdapter",
    "RelPosAttention",
    "SamViTBlock",
    "SamViTEncoder",
    "MedSAMTeacher",
    "SAM_GLOBAL_ATTN_INDEXES",
]

#: blocks of SAM ViT-B that use global attention (all others use 14x14 windows).
SAM_GLOBAL_ATTN_INDEXES: tuple[int, ...] = (2, 5, 8, 11)


# ------------------------------------------------------------------------------------------------
# SAM ViT building blocks
# ------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a ``B x C x H x W`` map (SAM's neck norm, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class _MLP(nn.Module):
    """Two-layer GELU MLP with SAM's ``lin1``/``lin2`` names."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class BottleneckAdapter(nn.Module):
    """MSA's bottleneck adapter: ``D_fc1`` (dim -> dim * ratio), GELU, ``D_fc2``, optional residual.

    Args:
        dim: token width.
        ratio: bottleneck ratio (0.25 in MSA: 768 -> 192).
        skip: add the input back (``Space_Adapter``) or not (``MLP_Adapter``, ``Depth_Adapter``).
    """

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.D_fc1 = nn.Linear(dim, hidden)
        self.D_fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.D_fc2(self.act(self.D_fc1(x)))
        return x + y if self.skip else y


def _rel_pos_table(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings ``[q_size, k_size, C]`` for one axis (SAM/MViTv2 convention).

    The table has ``2 * max(q, k) - 1`` rows for the grid it was trained on; for another grid it is
    resized linearly along its length first.
    """
    n_rel = 2 * max(q_size, k_size) - 1
    if table.shape[0] != n_rel:
        table = F.interpolate(table.t().unsqueeze(0), size=n_rel, mode="linear").squeeze(0).t()
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_idx = torch.arange(q_size, device=table.device)[:, None] * q_scale
    k_idx = torch.arange(k_size, device=table.device)[None, :] * k_scale
    idx = (q_idx - k_idx) + (k_size - 1) * k_scale
    return table[idx.long()]


class RelPosAttention(nn.Module):
    """Multi-head self-attention on a ``B x H x W x C`` grid with decomposed relative positions.

    The bias added to the logits of query ``(h, w)`` and key ``(h', w')`` is
    ``<q, R_h[h, h']> + <q, R_w[w, w']>`` with the *unscaled* query, as in SAM.

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: bias on the fused qkv projection.
        rel_pos_size: ``(h, w)`` grid the relative tables are sized for (``None``: no tables).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, rel_pos_size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = rel_pos_size is not None
        if rel_pos_size is not None:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n, nh = h * w, self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, nh, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x N x head_dim
        bias = None
        if self.use_rel_pos:
            rh = _rel_pos_table(h, h, self.rel_pos_h)  # h x h x c
            rw = _rel_pos_table(w, w, self.rel_pos_w)  # w x w x c
            rq = q.reshape(b, nh, h, w, self.head_dim)
            bias_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rh)
            bias_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rw)
            bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, nh, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, nh * self.head_dim)
        return self.proj(out)


def _window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``B x H x W x C`` to multiples of ``ws`` and cut it into ``ws x ws`` windows."""
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def _window_unpartition(win: torch.Tensor, ws: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_window_partition`, dropping the padding."""
    hp, wp = padded
    h, w = size
    b = win.shape[0] // ((hp // ws) * (wp // ws))
    x = win.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


class SamViTBlock(nn.Module):
    """One SAM ViT block, optionally with the three MSA adapters.

    SAM: ``x = x + unwindow(attn(window(norm1(x))))``, then ``x = x + mlp(norm2(x))``.

    MSA (``adapters=True``, ``models/ImageEncoder/vit/adapter_block.py``): windows are cut *before*
    ``norm1`` (so padded tokens become ``norm1(0) = norm1.bias`` rather than zeros), the attention
    output goes through ``Space_Adapter`` (residual bottleneck) before the shortcut, and the MLP
    branch becomes ``x + mlp(n) + scale * MLP_Adapter(n)`` with ``n = norm2(x)``. ``Depth_Adapter``
    only acts on MSA's 3D inputs; it is kept for the key layout and unused here.

    Args:
        dim: token width (768).
        num_heads: heads (12).
        window_size: window side (14), or 0 for global attention.
        rel_pos_size: grid of the relative tables (window or full token grid), ``None`` for none.
        adapters: add MSA's ``MLP_Adapter``, ``Space_Adapter`` and ``Depth_Adapter``.
        adapter_scale: weight of the MLP adapter (0.5 in MSA).
    """

    def __init__(
        self,
        dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        window_size: int = 0,
        rel_pos_size: tuple[int, int] | None = None,
        adapters: bool = False,
        adapter_scale: float = 0.5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, qkv_bias=True, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _MLP(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        self.adapters = adapters
        self.adapter_scale = adapter_scale
        if adapters:
            self.MLP_Adapter = BottleneckAdapter(dim, skip=False)
            self.Space_Adapter = BottleneckAdapter(dim, skip=True)
            self.Depth_Adapter = BottleneckAdapter(dim, skip=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        h, w = x.shape[1], x.shape[2]
        if not self.adapters:
            x = self.norm1(x)
        if self.window_size > 0:
            x, padded = _window_partition(x, self.window_size)
        if self.adapters:
            x = self.norm1(x)
        x = self.attn(x)
        if self.adapters:
            x = self.Space_Adapter(x)
        if self.window_size > 0:
            x = _window_unpartition(x, self.window_size, padded, (h, w))
        x = shortcut + x
        n = self.norm2(x)
        if self.adapters:
            return x + self.mlp(n) + self.adapter_scale * self.MLP_Adapter(n)
        return x + self.mlp(n)


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B x H x W x C


class SamViTEncoder(nn.Module):
    """SAM's ViT image encoder (``ImageEncoderViT``), ViT-B settings by default.

    Parameter names and shapes equal the ``image_encoder.*`` entries of SAM ViT-B checkpoints
    (pre-training grid 64x64 for the absolute and global relative position tables).

    Args:
        embed_dim: token width.
        depth: number of blocks.
        num_heads: heads per block.
        patch_size: patch side.
        pretrain_img_size: image side the position tables are sized for (1024).
        window_size: window side of the non-global blocks.
        global_attn_indexes: blocks with global attention.
        out_chans: neck width.
        use_rel_pos: create relative position tables (SAM: yes; MSA runs with zero tables, which
            is the same as none).
        adapters: build MSA's adapter blocks.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        patch_size: int = 16,
        pretrain_img_size: int = 1024,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = SAM_GLOBAL_ATTN_INDEXES,
        out_chans: int = 256,
        use_rel_pos: bool = True,
        adapters: bool = False,
    ) -> None:
        super().__init__()
        grid = pretrain_img_size // patch_size
        self.patch_size = patch_size
        self.patch_embed = _PatchEmbed(patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList()
        for i in range(depth):
            is_global = i in global_attn_indexes
            size = (grid, grid) if is_global else (window_size, window_size)
            self.blocks.append(
                SamViTBlock(
                    embed_dim,
                    num_heads,
                    window_size=0 if is_global else window_size,
                    rel_pos_size=size if use_rel_pos else None,
                    adapters=adapters,
                )
            )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        """The absolute position embedding for an ``h x w`` token grid (bicubic resize if needed)."""
        pos = self.pos_embed
        if pos.shape[1:3] == (h, w):
            return pos
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1)

    def forward_taps(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the blocks in ``taps`` (channels-first ``B x C x h x w``) and of the neck.

        Args:
            x: ``B x 3 x H x W`` with ``H`` and ``W`` multiples of the patch size.
            taps: block indices to return, in increasing order.

        Returns:
            ``[block taps..., neck]``.
        """
        x = self.patch_embed(x)
        x = x + self.abs_pos(x.shape[1], x.shape[2])
        outs: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in taps:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        outs.append(self.neck(x.permute(0, 3, 1, 2)))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (neck output), ``B x 256 x H/16 x W/16``."""
        return self.forward_taps(x, ())[-1]


# ------------------------------------------------------------------------------------------------
# MedSAM
# ------------------------------------------------------------------------------------------------


class MedSAMTeacher(FrozenTeacher):
    """MedSAM (Ma et al., Nat. Commun. 2024): SAM ViT-B image encoder fine-tuned on medical images.

    Loads ``medsam_vit_b.pth``, a flat state dict of ``segment_anything``'s ``Sam`` (ViT-B, 314 keys,
    no prefix; ``bowang-lab/MedSAM``). The 177 ``image_encoder.*`` tensors are required with exact
    names and shapes; the ``prompt_encoder.*`` and ``mask_decoder.*`` tensors are dropped on purpose
    (the teacher is the image encoder only). Any other key is an error. A leading ``module.`` is
    accepted (training checkpoints saved under DataParallel).

    Tapped layers (``tap_names``), channels-first, for the default 1024x1024 input:

    ======== ============================== ===================
    tap      module                         shape
    ======== ============================== ===================
    block2   ``image_encoder.blocks.2``     ``B x 768 x 64 x 64``
    block5   ``image_encoder.blocks.5``     ``B x 768 x 64 x 64``
    block8   ``image_encoder.blocks.8``     ``B x 768 x 64 x 64``
    block11  ``image_encoder.blocks.11``    ``B x 768 x 64 x 64``
    neck     ``image_encoder.neck``         ``B x 256 x 64 x 64``
    ======== ============================== ===================

    (the four global-attention blocks and the image embedding fed to SAM's mask decoder). For
    ``spatial_size = (H, W)`` every tap is ``H/16 x W/16``.

    Preprocessing (MedSAM's own, which bypasses SAM's ImageNet mean/std): optional CT window or
    percentile clip of the raw intensities, grey -> 3 channels, bicubic resize to ``spatial_size``,
    then per-image min-max scaling to ``[0, 1]``.

    Args:
        checkpoint: path of ``medsam_vit_b.pth``; ``None`` builds random weights (with a warning).
        sha256: expected SHA-256 of the file, checked before loading.
        spatial_size: model input size, an int or ``(H, W)``, multiples of 16. MedSAM was trained at
            1024x1024 (upstream accepts nothing else); smaller sizes resize the absolute position
            embedding bicubically (as MSA does) and are meant for tests and quick experiments.
        window: ``(low, high)`` CT window in HU applied to the raw input (MedSAM uses
            ``(-160, 240)``, level 40 / width 400, for CT); ``None`` for none.
        percentiles: ``(low, high)`` percentile clip on non-zero voxels (MedSAM uses ``(0.5, 99.5)``
            for MR and other modalities); ``None`` for none.

    Raises:
        CheckpointError: the file is missing, fails its checksum, holds non-tensor objects, or its
            keys/shapes differ from the official layout.
        ValueError: invalid ``spatial_size``.
    """

    spatial_dims = 2
    tap_names = ("block2", "block5", "block8", "block11", "neck")
    tap_blocks: tuple[int, ...] = SAM_GLOBAL_ATTN_INDEXES

    def __init__(
        self,
        checkpoint: str | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = 1024,
        window: tuple[float, float] | None = None,
        percentiles: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        size = check_spatial_size(spatial_size, 16, 2, "MedSAM")
        self.preprocessing = nn.Sequential(
            SampleIntensityNorm("none", percentiles=percentiles, nonzero=True) if percentiles else nn.Identity(),
            TeacherPreprocessing(2, 3, size, mean=0.0, std=1.0, window=window, mode="bicubic"),
            SampleIntensityNorm("minmax"),
        )
        with init_context(checkpoint is not None):
            self.image_encoder = SamViTEncoder()
        if checkpoint is not None:
            materialize_for_load(self.image_encoder)
            self.load_official_checkpoint(
                make_view(self.image_encoder, "image_encoder.", label="MedSAM image_encoder"),
                checkpoint,
                sha256=sha256,
                key_map=self._key_map,
            )
        else:
            self.warn_random_weights("the image encoder")
        self.freeze()

    @staticmethod
    def _key_map(key: str) -> str | None:
        key = strip_module_prefix(key)
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            return None  # SAM's prompt encoder and mask decoder: not part of the teacher
        return key

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Block 2/5/8/11 token maps and the neck embedding for a preprocessed ``B x 3 x H x W`` input."""
        return self.image_encoder.forward_taps(x, self.tap_blocks)
