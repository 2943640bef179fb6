"""Swin-UMamba teacher (Liu et al., MICCAI 2024): the ImageNet-initialised VMamba-T encoder.

The encoder is re-implemented with the names of ``JiarunLiu/Swin-UMamba``'s
``nnunetv2/nets/SwinUMamba.py`` (``stem`` + ``vssm_encoder``), so the ``network_weights`` of the
released nnU-Net v2 checkpoints load with strict key and shape matching.

Upstream runs the selective scan with ``mamba_ssm``'s CUDA kernel. Here it is pure PyTorch:
:func:`selective_scan` (a two-level chunked scan, the default) and
:func:`selective_scan_reference` (the plain per-timestep recurrence, for checking). Both compute,
in float32, for channel ``d`` and step ``t``::

    delta_t = softplus(delta_raw_t + delta_bias_d)
    h_t     = exp(delta_t * A_d) * h_{t-1} + delta_t * B_t * u_t        (h_0 = 0)
    y_t     = <C_t, h_t> + D_d * u_t

which is ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` with ``z = None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from drd_components.teachers.base import FrozenTeacher
from drd_components.teachers.checkpoint import init_context, make_view, materialize_for_load, numpy_scalar_safe_globals
from drd_components.teachers.preprocessing import SampleIntensityNorm, TeacherPreprocessing, check_spatial_size

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "SS2D",
    "VSSBlock",
    "VSSMEncoder",
    "SwinUMambaTeacher",
]


# ------------------------------------------------------------------------------------------------
# selective scan (pure PyTorch)
# ------------------------------------------------------------------------------------------------


def _prepare_scan(u, delta, A, B, C, delta_bias, delta_softplus):
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.ndim == 3:
        B = B[:, None]
    if C.ndim == 3:
        C = C[:, None]
    d, groups = u.shape[1], B.shape[1]
    if d % groups or C.shape[1] != groups:
        raise ValueError(f"{d} channels cannot be split into B/C groups of shapes {tuple(B.shape)}, {tuple(C.shape)}.")
    return u, delta, A.float(), B.float(), C.float()


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Selective scan as a plain loop over time steps (slow; the reference for tests).

    Args:
        u: inputs ``b x d x l``.
        delta: step sizes before bias/softplus, ``b x d x l``.
        A: state matrix (diagonal, negative) ``d x n``.
        B: input projections ``b x g x n x l`` (``g`` groups of ``d / g`` consecutive channels
            share one) or ``b x n x l``.
        C: output projections, same shape as ``B``.
        D: skip weights ``d``.
        delta_bias: added to ``delta``, ``d``.
        delta_softplus: apply softplus to ``delta``.

    Returns:
        ``b x d x l`` float32 outputs.
    """
    u, delta, A, B, C = _prepare_scan(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, length = u.shape
    rep = d // B.shape[1]
    Bx = B.repeat_interleave(rep, dim=1)  # b d n l
    Cx = C.repeat_interleave(rep, dim=1)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    return y


def _chunked_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Two-level chunked scan (``u``, ``delta``: b x d x l; ``A``: d x n; ``B``, ``C``: b x g x n x l)."""
    b, d, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dg = d // g
    nc = -(-length // chunk)
    pad = nc * chunk - length
    if pad:  # delta = 0 on padded steps: the state is carried unchanged and their outputs dropped
        u, delta, B, C = (F.pad(t, (0, pad)) for t in (u, delta, B, C))
    # time-major chunked layout: index [t, ..., c, ...] is step t of chunk c
    dt = delta.view(b, g, dg, nc, chunk).permute(4, 0, 1, 2, 3).contiguous()  # T b g dg c
    dtu = (delta * u).view(b, g, dg, nc, chunk).permute(4, 0, 1, 2, 3).contiguous()  # T b g dg c
    Bt = B.view(b, g, n, nc, chunk).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()  # T b g 1 c n
    Ct = C.view(b, g, n, nc, chunk).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()  # T b g 1 c n
    A = A.view(g, dg, 1, n)
    y = u.new_empty(chunk, b, g, dg, nc)
    # pass 1: every chunk scanned from a zero state, all chunks at once
    h = u.new_zeros(b, g, dg, nc, n)
    for t in range(chunk):
        h = torch.addcmul(dtu[t].unsqueeze(-1) * Bt[t], torch.exp(dt[t].unsqueeze(-1) * A), h)
        y[t] = (h * Ct[t]).sum(-1)
    # state entering each chunk: h0[c] = decay(c-1) * h0[c-1] + h_local_end[c-1], h0[0] = 0,
    # with decay(c) = exp(A * sum of delta over chunk c) (<= 1)
    cum_dt = dt.cumsum(0)  # T b g dg c
    total = torch.exp(cum_dt[-1].unsqueeze(-1) * A).movedim(3, 0)  # c b g dg n
    last = h.movedim(3, 0)
    entering = [torch.zeros_like(last[0])]
    for c in range(1, nc):
        entering.append(torch.addcmul(last[c - 1], total[c - 1], entering[-1]))
    h0 = torch.stack(entering, dim=3)  # b g dg c n
    # pass 2: add the carried state's decayed contribution <C_t, exp(A * sum_{s<=t} delta_s) h0>
    for t in range(chunk):
        y[t] += (torch.exp(cum_dt[t].unsqueeze(-1) * A) * h0 * Ct[t]).sum(-1)
    return y.permute(1, 2, 3, 4, 0).reshape(b, d, nc * chunk)[..., :length]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Selective scan, vectorised: a two-level chunked recurrence in pure PyTorch.

    The sequence is cut into chunks of ``chunk_size`` steps (default ``ceil(sqrt(l))``). All chunks
    (and all channels) are scanned at once from a zero state, in ``chunk_size`` vectorised steps;
    then the state entering each chunk is propagated across chunks (``l / chunk_size`` cheap
    steps), and a second vectorised pass over the chunk steps adds its decayed contribution
    ``<C_t, exp(A * sum_{s<=t} delta_s) h_0>``. Every exponent is ``<= 0`` (``A < 0``), so nothing
    overflows, and the working tensors stay at ``b x d x l/chunk x n``. This replaces ``l``
    sequential steps by about ``3 sqrt(l)`` vectorised ones; the result equals
    :func:`selective_scan_reference` up to float rounding.

    Args:
        u, delta, A, B, C, D, delta_bias, delta_softplus: as in :func:`selective_scan_reference`.
        chunk_size: steps per chunk.

    Returns:
        ``b x d x l`` float32 outputs.
    """
    u, delta, A, B, C = _prepare_scan(u, delta, A, B, C, delta_bias, delta_softplus)
    length = u.shape[-1]
    chunk = max(1, min(length, chunk_size or math.ceil(math.sqrt(length))))
    y = _chunked_scan(u, delta, A, B, C, chunk)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    return y


# ------------------------------------------------------------------------------------------------
# VMamba (v0) encoder
# ------------------------------------------------------------------------------------------------


class SS2D(nn.Module):
    """2D selective-scan module of VMamba v0 (four scan directions), Swin-UMamba's ``self_attention``.

    ``in_proj`` (C -> 4C, split into x and z), depthwise 3x3 ``conv2d`` + SiLU on x, four scans
    (row-major, column-major and both reversed) with per-direction ``x_proj_weight``,
    ``dt_projs_weight``/``dt_projs_bias``, shared-layout ``A_logs``/``Ds``; the outputs are mapped
    back to row-major order and summed, then ``out_norm``, times SiLU(z), ``out_proj``.

    Args:
        d_model: token width ``C``.
        d_state: SSM state size (16).
        expand: inner width factor (2).
        d_conv: depthwise kernel size (3).
        scan: ``"chunked"`` (:func:`selective_scan`) or ``"naive"`` (:func:`selective_scan_reference`).
        chunk_size: chunk length of the chunked scan (``None``: ``ceil(sqrt(L))``).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 3,
        scan: str = "chunked",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if scan not in ("chunked", "naive"):
            raise ValueError(f"scan must be 'chunked' or 'naive', got {scan!r}.")
        self.d_state = d_state
        self.d_inner = d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan = scan
        self.chunk_size = chunk_size
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(4, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(4, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(4, d_inner))
        self.A_logs = nn.Parameter(torch.empty(4 * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(4 * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba-style initialisation (used only when no checkpoint is loaded)."""
        bound = self.d_inner**-0.5
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(
            min=1e-4
        )
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x H x W x C`` -> ``B x H x W x C``."""
        b, h, w, _ = x.shape
        length, k, d = h * w, 4, self.d_inner
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xi = F.silu(self.conv2d(xi.permute(0, 3, 1, 2)))  # b d h w
        row = xi.reshape(b, d, length)
        col = xi.transpose(2, 3).reshape(b, d, length)
        xs = torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)  # b k d l
        proj = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(proj, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        args = (
            xs.reshape(b, k * d, length),
            dts.reshape(b, k * d, length),
            -torch.exp(self.A_logs.float()),
            Bs,
            Cs,
            self.Ds,
            self.dt_projs_bias.reshape(-1),
        )
        if self.scan == "chunked":
            y = selective_scan(*args, delta_softplus=True, chunk_size=self.chunk_size)
        else:
            y = selective_scan_reference(*args, delta_softplus=True)
        y = y.view(b, k, d, length)
        y_row = y[:, 0] + y[:, 2].flip(-1)
        y_col = y[:, 1] + y[:, 3].flip(-1)
        y_col = y_col.view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
        out = (y_row + y_col).transpose(1, 2).reshape(b, h, w, d)
        out = self.out_norm(out) * F.silu(z)
        return self.out_proj(out)


class VSSBlock(nn.Module):
    """``x + SS2D(ln_1(x))`` (drop-path is off at inference)."""

    def __init__(self, dim: int, d_state: int = 16, scan: str = "chunked", chunk_size: int | None = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)  # Swin-UMamba passes nn.LayerNorm (eps 1e-5) down to the blocks
        self.self_attention = SS2D(dim, d_state=d_state, scan=scan, chunk_size=chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.self_attention(self.ln_1(x))


class _VSSLayer(nn.Module):
    def __init__(self, dim: int, depth: int, **kwargs) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([VSSBlock(dim, **kwargs) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class _PatchEmbed2D(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class _PatchMerging2D(nn.Module):
    """Concatenate each 2x2 neighbourhood (order (0,0), (1,0), (0,1), (1,1)), LayerNorm(4C), Linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        x = x[:, :h, :w]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class VSSMEncoder(nn.Module):
    """Swin-UMamba's ``VSSMEncoder``: patch embedding, 4 VSS stages, patch merging between stages.

    Args:
        in_chans: input channels (48, the stem's output).
        patch_size: patch embedding stride (2).
        depths: blocks per stage.
        dims: widths per stage.
        d_state: SSM state size.
        scan, chunk_size: see :class:`SS2D`.
    """

    def __init__(
        self,
        in_chans: int = 48,
        patch_size: int = 2,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        d_state: int = 16,
        scan: str = "chunked",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed2D(patch_size, in_chans, dims[0])
        self.layers = nn.ModuleList(
            [
                _VSSLayer(dim, depth, d_state=d_state, scan=scan, chunk_size=chunk_size)
                for dim, depth in zip(dims, depths)
            ]
        )
        self.downsamples = nn.ModuleList([_PatchMerging2D(dim) for dim in dims[:-1]])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs, channels-first ``B x dims[i] x H/(2**i) x W/(2**i)`` relative to the embedding."""
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            outs.append(x.permute(0, 3, 1, 2).contiguous())
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outs


_DROPPED_SWIN_UMAMBA = re.compile(r"^(encoder[1-5]|decoder[1-6]|out_layers)\.")


class SwinUMambaTeacher(FrozenTeacher):
    """Swin-UMamba's Mamba encoder (stem + VMamba-T trunk), from a released nnU-Net v2 checkpoint.

    Loads e.g. ``Dataset702_AbdomenMR/nnUNetTrainerSwinUMamba__nnUNetPlans__2d/fold_all/checkpoint_final.pth``
    (or ``checkpoint_99.pth`` ...): an nnU-Net dict ``{"network_weights", "optimizer_state",
    "grad_scaler_state", "logging", "_best_ema", "current_epoch", "init_args", "trainer_name",
    "inference_allowed_mirroring_axes"}``, read with ``weights_only=True`` and an allow-list of
    exactly the numpy scalar globals its ``logging`` needs
    (:func:`~drd_components.teachers.checkpoint.numpy_scalar_safe_globals`).
    From ``network_weights`` (no prefix) the 212 ``stem.*`` and ``vssm_encoder.*`` tensors are
    required with exact names and shapes; the UNETR skip refiners ``encoder1..5``, the decoder
    ``decoder1..6`` and the heads ``out_layers`` are dropped on purpose. Any other key is an error.

    Architecture: stem Conv2d(C_in, 48, 7, stride 2) + InstanceNorm2d(affine); VMamba-T v0
    (patch embed 2x2 -> 96, stages of 2/2/9/2 VSS blocks, widths 96/192/384/768, patch merging).

    Tapped layers (``tap_names``; the Mamba trunk's stage outputs, channels-first) for the default
    256x256 input (stride 4/8/16/32 in general; H and W must be multiples of 32):

    ===== ================================= ====================
    tap   module                            shape
    ===== ================================= ====================
    S1    ``vssm_encoder.layers.0``         ``B x 96 x 64 x 64``
    S2    ``vssm_encoder.layers.1``         ``B x 192 x 32 x 32``
    S3    ``vssm_encoder.layers.2``         ``B x 384 x 16 x 16``
    S4    ``vssm_encoder.layers.3``         ``B x 768 x 8 x 8``
    ===== ================================= ====================

    Preprocessing (nnU-Net ``2d`` configuration): channel adaptation to ``in_channels``, bilinear
    resize to ``spatial_size``, then nnU-Net's ZScore normalisation per sample and channel. nnU-Net
    normalises each whole case before slicing; ``normalization="none"`` skips the z-score for inputs
    that are already normalised that way.

    Args:
        checkpoint: the nnU-Net ``.pth`` file; ``None`` builds random weights (with a warning).
        sha256: expected SHA-256 of the file.
        spatial_size: ``(H, W)`` model input, multiples of 32. The plans' 2D patch size of the
            released models is not known here; 256x256 is a conservative default.
        in_channels: 1 for AbdomenMR (Dataset702), 3 for Endoscopy (704) and Microscopy (703).
        normalization: ``"zscore"`` or ``"none"``.
        scan: ``"chunked"`` (vectorised, default) or ``"naive"`` (per-step loop) selective scan.
        scan_chunk: chunk length of the chunked scan (``None``: ``ceil(sqrt(L))``).

    Raises:
        CheckpointError: the file is missing, fails its checksum, holds objects outside the
            allow-list, or its keys/shapes differ from the official layout.
        ValueError: invalid arguments.
    """

    spatial_dims = 2
    tap_names = ("S1", "S2", "S3", "S4")

    def __init__(
        self,
        checkpoint: str | None = None,
        sha256: str | None = None,
        spatial_size: int | Sequence[int] = (256, 256),
        in_channels: int = 1,
        normalization: str = "zscore",
        scan: str = "chunked",
        scan_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if normalization not in ("zscore", "none"):
            raise ValueError(f"normalization must be 'zscore' or 'none', got {normalization!r}.")
        size = check_spatial_size(spatial_size, 32, 2, "Swin-UMamba")
        steps: list[nn.Module] = [TeacherPreprocessing(2, in_channels, size, mean=0.0, std=1.0, mode="bilinear")]
        if normalization == "zscore":
            steps.append(SampleIntensityNorm("zscore", per_channel=True))
        self.preprocessing = nn.Sequential(*steps)
        with init_context(checkpoint is not None):
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 48, kernel_size=7, stride=2, padding=3),
                nn.InstanceNorm2d(48, eps=1e-5, affine=True),
            )
            self.vssm_encoder = VSSMEncoder(in_chans=48, patch_size=2, scan=scan, chunk_size=scan_chunk)
        if checkpoint is not None:
            materialize_for_load(self.stem)
            materialize_for_load(self.vssm_encoder)
            self.load_official_checkpoint(
                make_view(self, keep=lambda k: k.startswith(("stem.", "vssm_encoder.")), label="Swin-UMamba encoder"),
                checkpoint,
                sha256=sha256,
                container_keys=("network_weights",),
                key_map=self._key_map,
                allowed_globals=numpy_scalar_safe_globals(),
            )
        else:
            self.warn_random_weights("the encoder")
        self.freeze()

    @staticmethod
    def _key_map(key: str) -> str | None:
        if _DROPPED_SWIN_UMAMBA.match(key):
            return None  # UNETR skip refiners, decoder and heads: not part of the teacher
        return key

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs S1-S4 for a preprocessed ``B x C_in x H x W`` input."""
        return self.vssm_encoder(self.stem(x))
