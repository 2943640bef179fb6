"""Segmentation metrics for the bundles: per-structure selection and a SciPy-free 95% Hausdorff distance.

MONAI's ``HausdorffDistanceMetric`` needs SciPy (``binary_erosion``, distance transforms), which is
not a dependency of this project; :class:`HausdorffDistance95Metric` computes the same quantity
(surface voxels by face-connected erosion, as SciPy's default structuring element, and exact
Euclidean point-to-surface distances in millimetres) with PyTorch alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler
from monai.handlers.utils import from_engine
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction

__all__ = ["SelectChannels", "surface_voxels", "hausdorff_distance_95", "HausdorffDistance95Metric", "HausdorffDistance95"]


class SelectChannels:
    """Output transform: take ``keys`` from ``engine.state.output`` and keep channels ``[0, channel]``
    of every item, so that a metric with ``include_background=False`` (e.g. ``MeanDice``) reports
    one structure.

    Args:
        channel: the structure's channel in the one-hot prediction/label.
        keys: output keys to select.
    """

    def __init__(self, channel: int, keys: Sequence[str] = ("pred", "label")) -> None:
        if channel < 1:
            raise ValueError(f"channel must be a foreground channel (>= 1), got {channel}.")
        self.channel = int(channel)
        self.getter = from_engine(list(keys))

    def __call__(self, data: Any) -> tuple:
        values = self.getter(data)
        return tuple([t[[0, self.channel]] for t in v] if isinstance(v, list) else v[:, [0, self.channel]] for v in values)


def surface_voxels(mask: torch.Tensor) -> torch.Tensor:
    """Boolean surface (edge) of a binary mask: voxels of the mask with at least one face neighbour
    outside it; the outside of the array counts as background (SciPy ``binary_erosion`` defaults).

    Args:
        mask: ``spatial`` boolean tensor (any number of dimensions).
    """
    mask = mask.bool()
    padded = torch.nn.functional.pad(mask[None, None].float(), [1, 1] * mask.ndim)[0, 0].bool()
    eroded = mask.clone()
    for axis in range(mask.ndim):
        for shift in (0, 2):
            index = [slice(1, -1)] * mask.ndim
            index[axis] = slice(shift, shift + mask.shape[axis])
            eroded &= padded[tuple(index)]
    return mask & ~eroded


def _surface_to_surface(edge_a: torch.Tensor, edge_b: torch.Tensor, spacing: torch.Tensor, chunk: int) -> torch.Tensor:
    """Distance from every voxel of ``edge_a`` to the nearest voxel of ``edge_b`` (shared voxels are 0)."""
    shared = int((edge_a & edge_b).sum())
    pa = torch.nonzero(edge_a & ~edge_b).double() * spacing
    pb = torch.nonzero(edge_b).double() * spacing
    centre = pb.mean(dim=0)  # centred float32 coordinates keep the matrix-product distances exact enough
    pa, pb = (pa - centre).float(), (pb - centre).float()
    out = [torch.zeros(shared)]
    for start in range(0, pa.shape[0], chunk):
        out.append(torch.cdist(pa[start : start + chunk], pb).amin(dim=1))
    return torch.cat(out).double()


def hausdorff_distance_95(
    pred: torch.Tensor,
    target: torch.Tensor,
    spacing: Sequence[float] | None = None,
    percentile: float = 95.0,
    chunk_size: int = 4096,
) -> float:
    """Symmetric percentile Hausdorff distance between the surfaces of two binary masks.

    ``max(P(d(pred -> target)), P(d(target -> pred)))`` where ``d`` are the distances from each
    surface voxel to the nearest surface voxel of the other mask and ``P`` the percentile (linear
    interpolation, as ``numpy.percentile``); MONAI's ``compute_hausdorff_distance`` definition.

    Args:
        pred: ``spatial`` binary prediction.
        target: ``spatial`` binary ground truth.
        spacing: voxel size per axis (default 1).
        percentile: 95 for HD95; 100 for the classic Hausdorff distance.
        chunk_size: surface points per distance block (bounds memory).

    Returns:
        the distance; ``nan`` when ``target`` is empty; the image diagonal (the largest possible
        distance) when only ``pred`` is empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    sp = torch.tensor(list(spacing) if spacing is not None else [1.0] * pred.ndim, dtype=torch.float64)
    if not target.bool().any():
        return float("nan")
    if not pred.bool().any():
        return float(torch.linalg.vector_norm(torch.tensor(pred.shape, dtype=torch.float64) * sp))
    ea, eb = surface_voxels(pred), surface_voxels(target)
    q = percentile / 100.0
    d_ab = _surface_to_surface(ea, eb, sp, chunk_size)
    d_ba = _surface_to_surface(eb, ea, sp, chunk_size)
    return float(max(torch.quantile(d_ab, q), torch.quantile(d_ba, q)))


def _spacing_of(t: torch.Tensor, spatial_dims: int) -> list[float] | None:
    affine = getattr(t, "affine", None)
    if affine is None:
        return None
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.ndim == 3:
        a = a[0]
    return [float(v) for v in a[:spatial_dims, :spatial_dims].norm(dim=0)]


class HausdorffDistance95Metric(CumulativeIterationMetric):
    """Percentile (default 95%) Hausdorff distance per image and class, SciPy-free.

    Inputs are one-hot ``B x C x spatial`` predictions and labels (as for ``DiceMetric``).

    Args:
        include_background: also score channel 0.
        percentile: distance percentile.
        spacing: ``"auto"`` reads the voxel size from the prediction's affine (``MetaTensor``;
            1 when absent), ``None`` uses voxel units, or a per-axis sequence.
        reduction: MONAI metric reduction of the per-image, per-class values (``nan`` are skipped).
        get_not_nans: also return the count of non-``nan`` values.
        chunk_size: surface points per distance block.
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float = 95.0,
        spacing: str | Sequence[float] | None = "auto",
        reduction: str = "mean",
        get_not_nans: bool = False,
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.percentile = percentile
        self.spacing = spacing
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.chunk_size = chunk_size

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} must both be one-hot B x C x spatial.")
        sd = y_pred.ndim - 2
        if self.spacing == "auto":
            spacing = _spacing_of(y_pred, sd) or _spacing_of(y, sd)
        else:
            spacing = list(self.spacing) if self.spacing is not None else None
        first = 0 if self.include_background else 1
        out = torch.full((y_pred.shape[0], y_pred.shape[1] - first), math.nan, dtype=torch.float32)
        p = torch.as_tensor(y_pred).detach().cpu()
        t = torch.as_tensor(y).detach().cpu()
        for b in range(p.shape[0]):
            for c in range(first, p.shape[1]):
                out[b, c - first] = hausdorff_distance_95(p[b, c] > 0.5, t[b, c] > 0.5, spacing, self.percentile, self.chunk_size)
        return out

    def aggregate(self, reduction: str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class HausdorffDistance95(IgniteMetricHandler):
    """Ignite handler for :class:`HausdorffDistance95Metric` (use it like MONAI's ``HausdorffDistance``).

    Args:
        include_background: also score channel 0.
        percentile: distance percentile.
        spacing: see :class:`HausdorffDistance95Metric`.
        reduction: metric reduction.
        output_transform: picks ``(y_pred, y)`` from the engine output.
        save_details: keep per-image values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float = 95.0,
        spacing: str | Sequence[float] | None = "auto",
        reduction: str = "mean",
        output_transform: Any = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = HausdorffDistance95Metric(include_background, percentile, spacing, reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
