"""Segmentation metrics without SciPy (surface distances), per-structure selection, cardiac indices."""

from drd_components.metrics.cardiac import EjectionFractionError, ejection_fraction
from drd_components.metrics.segmentation import (
    HausdorffDistance95,
    HausdorffDistance95Metric,
    SelectChannels,
    hausdorff_distance_95,
    surface_voxels,
)
