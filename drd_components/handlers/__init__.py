"""Ignite/MONAI handlers and output transforms for DRD training."""

from drd_components.handlers.loss_terms import LossTermsTransform
from drd_components.handlers.predictions import ClassificationPredictionsWriter
