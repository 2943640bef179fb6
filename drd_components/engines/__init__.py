"""Training engines."""

from drd_components.engines.drd_trainer import LOSS_TERM_KEYS, DRDTrainer
