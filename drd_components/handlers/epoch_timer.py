"""Log the wall time of every training epoch."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["EpochTimeLogger"]


class EpochTimeLogger:
    """Log ``Epoch N time: X s`` after each epoch and keep the times in ``engine.state.epoch_times``.

    The time covers the training iterations of the epoch (data loading included). Attach it
    before a ``ValidationHandler`` (first in a bundle's handler list) so that the validation run
    started at the same event is not counted.

    Args:
        name: logger name (``None``: the engine's logger).
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _completed(self, engine: Engine) -> None:
        elapsed = time.perf_counter() - self._start
        times = getattr(engine.state, "epoch_times", [])
        times.append(elapsed)
        engine.state.epoch_times = times
        logger = engine.logger if self.name is None else logging.getLogger(self.name)
        logger.info(f"Epoch {engine.state.epoch} time: {elapsed:.3f} s")
