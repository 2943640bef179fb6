"""BatchNorm running-statistics control for DRD's hybrid paths."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["running_stats_frozen"]


@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Keep the running statistics of every BatchNorm layer in ``module`` unchanged.

    Inside the context, BatchNorm layers in training mode still normalise with the batch's own
    statistics (so gradients are those of a normal training pass), but their running mean and
    variance are not updated (momentum 0). DRD uses this for the hybrid paths: their inputs are
    reprogrammed teacher features, whose statistics differ from the student's own, and folding
    them into the running estimates would make the deployed (eval-mode) student normalise with
    the wrong statistics.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            counter = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, counter))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, counter in saved:
            m.momentum = momentum
            if counter is not None:
                m.num_batches_tracked.copy_(counter)
