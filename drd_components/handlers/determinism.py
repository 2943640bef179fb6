"""Per-epoch reseeding, so a resumed run replays every remaining epoch exactly.

A resume checkpoint restores weights, optimizer, scheduler and epoch counter but not the random
number generators. Instead of saving the generators' states (python, numpy, torch and every MONAI
random transform's own ``RandomState``, some of which live in dataloader workers), every epoch
starts from generators seeded with a value derived from ``(seed, epoch)``. An epoch's shuffle,
augmentation and dropout then depend only on the seed, the epoch number and the weights at its
start, which is exactly what a resume checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism

__all__ = ["epoch_seed", "ReseedEachEpoch"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``epoch`` derived from the run's ``seed`` (numpy ``SeedSequence``).

    Args:
        seed: the run's seed.
        epoch: the 1-based epoch number.

    Returns:
        an integer in ``[0, 2**32)``; different epochs get unrelated seeds.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class ReseedEachEpoch:
    """Reseed every random number generator at the start of each epoch from ``(seed, epoch)``.

    At ``Events.EPOCH_STARTED`` it calls :func:`monai.utils.set_determinism` (python, numpy and
    torch global generators) and reseeds the random transforms found in ``randomizable`` (their
    own ``RandomState``s, via :func:`monai.data.utils.set_rnd`). The data loader draws its shuffle
    order and its workers' seeds from the torch generator when the epoch's iterator starts, which
    ignite does after ``EPOCH_STARTED``. Do not use ``persistent_workers=True`` with it: persistent
    workers keep their generators across epochs.

    Args:
        seed: the run's seed.
        randomizable: objects holding random transforms to reseed (e.g. the training dataset or
            its ``Compose``); ``None`` reseeds only the global generators.
    """

    def __init__(self, seed: int, randomizable: Any | Sequence[Any] | None = None) -> None:
        self.seed = int(seed)
        if randomizable is None:
            self.randomizable: list[Any] = []
        elif isinstance(randomizable, (list, tuple)):
            self.randomizable = list(randomizable)
        else:
            self.randomizable = [randomizable]

    def attach(self, engine: Engine) -> None:
        """Register at ``Events.EPOCH_STARTED`` of ``engine``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch)
        set_determinism(seed=seed)
        for obj in self.randomizable:
            set_rnd(obj, seed)
