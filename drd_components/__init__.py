"""Deep Reprogramming Distillation (DRD) components for MONAI bundles."""

__version__ = "0.1.0"
