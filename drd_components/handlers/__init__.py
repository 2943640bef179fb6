"""Ignite/MONAI handlers and output transforms for DRD training."""

from drd_components.handlers.loss_terms import LossTermsTransform
from drd_components.handlers.predictions import ClassificationPredictionsWriter
from drd_components.handlers.epoch_timer import EpochTimeLogger
from drd_components.handlers.metric_transforms import classification_output_transform
from drd_components.handlers.determinism import ReseedEachEpoch
from drd_components.handlers.resume import AtomicCheckpointSaver, ResumeFromLatestCheckpoint, ValidationProgress
from drd_components.handlers.run_report import RunReportWriter
from drd_components.handlers.training_curves import TrainingCurvesWriter
