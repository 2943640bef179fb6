"""Input adaptation from a bundle's image tensor to what a foundation model was trained on.

:class:`TeacherPreprocessing` does the fixed-statistics part (CT window, channels, resize,
mean/std); :class:`SampleIntensityNorm` normalises each sample with its own statistics (z-score,
min-max, percentile clipping); :func:`check_spatial_size` validates a model's input size;
:func:`resize_inter_area` resizes like OpenCV's ``INTER_AREA``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TeacherPreprocessing", "InputChannelSelect", "SampleIntensityNorm", "check_spatial_size", "resize_inter_area"]

_LINEAR_MODES = ("linear", "bilinear", "bicubic", "trilinear")


def _area_weights(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``n_out x n_in`` box-overlap weights: output pixel ``i`` covers ``[i s, (i + 1) s)``, ``s = n_in / n_out``."""
    s = n_in / n_out
    i = torch.arange(n_out, dtype=torch.float64)[:, None]
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = (torch.minimum((i + 1) * s, j + 1) - torch.maximum(i * s, j)).clamp_min(0.0)
    return (overlap / s).to(dtype=dtype, device=device)


def resize_inter_area(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the trailing ``len(size)`` axes of ``x`` like OpenCV's ``cv2.resize(..., INTER_AREA)``.

    Each output pixel is the average of the input over its footprint, every input pixel weighted by
    the length of its overlap with it (separable, one matrix product per axis). This is
    ``INTER_AREA`` in both directions for float images: shrinking by any factor, and enlarging,
    where the footprint is shorter than a pixel and straddles at most two (checked against
    ``cv2`` 5.1 on float32 images: differences below 2e-7). ``torch.nn.functional.interpolate``'s
    ``"area"`` mode (adaptive average pooling) agrees only for integer shrink factors.

    Args:
        x: a floating-point tensor ``... x n_1 x ... x n_k``.
        size: the ``k`` output sizes.

    Returns:
        the resized tensor (same dtype and device).
    """
    k = len(size)
    for axis, n_out in zip(range(x.ndim - k, x.ndim), size):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        weights = _area_weights(n_in, int(n_out), x.dtype, x.device)
        x = torch.movedim(torch.movedim(x, axis, -1) @ weights.t(), -1, axis)
    return x.contiguous()


def check_spatial_size(spatial_size: int | Sequence[int], multiple: int, dims: int, name: str) -> tuple[int, ...]:
    """Validate a model input size.

    Args:
        spatial_size: an int (same size on every axis) or one size per axis.
        multiple: every size must be a positive multiple of this.
        dims: number of spatial axes.
        name: model name for the error message.

    Returns:
        the size as a tuple.

    Raises:
        ValueError: wrong number of axes or a size that is not a positive multiple.
    """
    size = (int(spatial_size),) * dims if isinstance(spatial_size, int) else tuple(int(s) for s in spatial_size)
    if len(size) != dims or any(s <= 0 or s % multiple for s in size):
        raise ValueError(f"{name} spatial_size must be {dims} positive multiples of {multiple}, got {spatial_size}.")
    return size


class TeacherPreprocessing(nn.Module):
    """Resize, channel adaptation, CT windowing and intensity normalisation for a teacher.

    The bundle feeds the teacher the same tensor it feeds the student (``B x C x H x W`` or
    ``B x C x D x H x W``). This module turns it into the foundation model's expected input in a
    fixed order: optional CT window (clip to ``window`` in HU, rescale to ``[0, 1]``), rescale from
    ``input_range`` to ``[0, 1]``, channel adaptation (grey -> ``in_channels`` by repetition,
    colour -> grey by the channel mean), resize to ``spatial_size`` and per-channel
    ``(x - mean) / std``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels the foundation model expects (3 for RGB models, 1 for most CT models).
        spatial_size: input size of the model; ``None`` keeps the incoming size.
        mean: per-channel mean after rescaling to ``[0, 1]`` (a single value is broadcast).
        std: per-channel standard deviation (a single value is broadcast).
        input_range: intensity range of the incoming tensor; mapped linearly to ``[0, 1]``.
            Ignored when ``window`` is set.
        window: optional ``(low, high)`` CT window in HU applied to the raw incoming tensor.
        mode: interpolation mode for resizing (``"bilinear"``/``"trilinear"`` chosen from
            ``spatial_dims`` when ``None``): a mode of ``torch.nn.functional.interpolate``, or
            ``"inter_area"`` for OpenCV's ``INTER_AREA`` (:func:`resize_inter_area`).

    Raises:
        ValueError: for invalid ``spatial_dims``, sizes or statistics.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        spatial_size: Sequence[int] | int | None = None,
        mean: Sequence[float] | float = 0.0,
        std: Sequence[float] | float = 1.0,
        input_range: tuple[float, float] = (0.0, 1.0),
        window: tuple[float, float] | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        if isinstance(spatial_size, int):
            spatial_size = (spatial_size,) * spatial_dims
        if spatial_size is not None and len(spatial_size) != spatial_dims:
            raise ValueError(f"spatial_size {spatial_size} does not have {spatial_dims} entries.")
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device="cpu").flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32, device="cpu").flatten()
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std}.")
        for name, t in (("mean", mean_t), ("std", std_t)):
            if t.numel() not in (1, in_channels):
                raise ValueError(f"{name} needs 1 or {in_channels} values, got {t.numel()}.")
        shape = (1, -1) + (1,) * spatial_dims
        self.register_buffer("mean", mean_t.reshape(shape), persistent=False)
        self.register_buffer("std", std_t.reshape(shape), persistent=False)
        if input_range[1] <= input_range[0]:
            raise ValueError(f"input_range must be increasing, got {input_range}.")
        self.input_range = (float(input_range[0]), float(input_range[1]))
        if window is not None and window[1] <= window[0]:
            raise ValueError(f"window must be increasing, got {window}.")
        self.window = window
        self.mode = mode or ("bilinear" if spatial_dims == 2 else "trilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt ``x`` (``B x C x spatial``) to the teacher's input.

        Raises:
            ValueError: when ``x`` does not have ``spatial_dims + 2`` dimensions.
        """
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"teacher input must have shape B x C x {'x'.join('DHW'[-self.spatial_dims:])}, got {tuple(x.shape)}."
            )
        x = x.float()
        if self.window is not None:
            low, high = self.window
            x = (x.clamp(low, high) - low) / (high - low)
        elif self.input_range != (0.0, 1.0):
            low, high = self.input_range
            x = (x - low) / (high - low)
        c = x.shape[1]
        if c != self.in_channels:
            if c == 1:
                x = x.expand(-1, self.in_channels, *x.shape[2:])
            elif self.in_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(
                    f"cannot adapt {c} input channels to the teacher's {self.in_channels}: choose the channel the "
                    "teacher sees (e.g. the teacher's input_channel argument, config id teacher_input_channel)."
                )
        if self.spatial_size is not None and tuple(x.shape[2:]) != self.spatial_size:
            if self.mode == "inter_area":
                x = resize_inter_area(x, self.spatial_size)
            else:
                # align_corners only exists for the linear modes ("area" and "nearest" refuse it)
                corners = False if self.mode in _LINEAR_MODES else None
                x = F.interpolate(x, size=self.spatial_size, mode=self.mode, align_corners=corners)
        return (x - self.mean) / self.std


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated percentile (numpy's default method) of a 1D tensor, for any length.

    Args:
        values: 1D tensor.
        q: percentile in ``[0, 100]``.

    Returns:
        a 0-dim tensor (zero for an empty ``values``).
    """
    n = values.numel()
    if n == 0:
        return values.new_zeros(())
    pos = q / 100.0 * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = torch.kthvalue(values, lo + 1).values
    if hi == lo:
        return v_lo
    v_hi = torch.kthvalue(values, hi + 1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)


class InputChannelSelect(nn.Module):
    """Keep one channel of a multi-channel input for a single-modality teacher.

    Multi-parametric inputs (e.g. prostate MRI: T2, ADC) cannot be mapped onto a teacher trained on
    one modality by averaging; the teacher sees the channel named here (a one-channel input passes
    through unchanged).

    Args:
        index: channel to keep, ``None`` to pass every channel through.

    Raises:
        ValueError: at call time, when ``index`` is not a channel of the input.
    """

    def __init__(self, index: int | None = None) -> None:
        super().__init__()
        if index is not None and int(index) < 0:
            raise ValueError(f"input_channel must be >= 0 or None, got {index}.")
        self.index = None if index is None else int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None or x.shape[1] == 1:
            return x
        if self.index >= x.shape[1]:
            raise ValueError(f"input_channel {self.index} does not exist: the input has {x.shape[1]} channels.")
        return x[:, self.index : self.index + 1]


class SampleIntensityNorm(nn.Module):
    """Per-sample intensity clipping and normalisation (statistics of each image, not of a dataset).

    Args:
        mode: ``"zscore"`` (``(x - mean) / max(std, 1e-8)``, population std, as nnU-Net and SAT),
            ``"minmax"`` (``(x - min) / max(max - min, 1e-8)``, as MedSAM) or ``"none"``.
        percentiles: optional ``(low, high)`` percentiles (0-100) to clip each sample to first
            (MR/PET in SAT and MedSAM).
        nonzero: compute the percentiles on non-zero voxels only and keep zero voxels at zero
            (MedSAM's MR/other-modality rule).
        per_channel: compute statistics per channel (nnU-Net normalises each channel separately)
            instead of over the whole sample.

    Raises:
        ValueError: for an unknown mode or invalid percentiles.
    """

    def __init__(
        self,
        mode: str = "zscore",
        percentiles: tuple[float, float] | None = None,
        nonzero: bool = False,
        per_channel: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("zscore", "minmax", "none"):
            raise ValueError(f"mode must be 'zscore', 'minmax' or 'none', got {mode!r}.")
        if percentiles is not None and not (0.0 <= percentiles[0] < percentiles[1] <= 100.0):
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}.")
        self.mode = mode
        self.percentiles = percentiles
        self.nonzero = nonzero
        self.per_channel = per_channel

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, percentiles={self.percentiles}, nonzero={self.nonzero}, per_channel={self.per_channel}"
        )

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        low_q, high_q = self.percentiles  # type: ignore[misc]
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            flat = x[i].reshape(-1)
            vals = flat[flat != 0] if self.nonzero else flat
            if vals.numel() == 0:
                out[i] = x[i]
                continue
            lo, hi = _percentile(vals, low_q), _percentile(vals, high_q)
            clipped = x[i].clamp(lo, hi)
            out[i] = torch.where(x[i] == 0, x[i], clipped) if self.nonzero else clipped
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (``B x C x spatial``) sample by sample."""
        x = x.float()
        if self.percentiles is not None:
            x = self._clip(x)
        if self.mode == "none":
            return x
        dims = tuple(range(2, x.ndim)) if self.per_channel else tuple(range(1, x.ndim))
        if self.mode == "zscore":
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
            return (x - mean) / std.clamp_min(1e-8)
        low = x.amin(dim=dims, keepdim=True)
        high = x.amax(dim=dims, keepdim=True)
        return (x - low) / (high - low).clamp_min(1e-8)
