"""Record DRD's loss terms and the validation metrics and plot them as training curves."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from drd_components.handlers.loss_terms import LossTermsTransform

__all__ = ["TrainingCurvesWriter", "curve_group"]

#: panel of each series, by name prefix (first match wins); anything else goes to "other".
GROUPS = (("cka_stage", "CKA per stage"), ("loss", "loss terms"), ("alpha", "alpha / beta"),
          ("beta", "alpha / beta"), ("lr", "learning rate"), ("val_", "validation"))


def curve_group(name: str) -> str:
    """Panel title of a series (``loss*`` -> loss terms, ``cka_stage*`` -> CKA per stage, ...)."""
    for prefix, title in GROUPS:
        if name.startswith(prefix):
            return title
    return "validation" if name.startswith("val") else "other"


class TrainingCurvesWriter:
    """Ignite handler for a trainer: records every scalar loss term of ``engine.state.output``
    (``loss``, and for :class:`~drd_components.engines.DRDTrainer` ``loss_task``, ``loss_hybrid``,
    ``loss_kl``, ``loss_cka``, ``alpha``, ``beta``, ``cka_stage<i>``) per iteration, their epoch
    means, the learning rate per epoch, and every scalar metric of the ``validator`` after each of
    its runs (key metric included). It writes ``<filename>.json`` and ``<filename>.png`` (one
    panel per group, matplotlib Agg) atomically into ``output_dir`` every ``interval`` epochs, at
    ``COMPLETED`` and when the run raises (the exception is re-raised), so a crashed run still
    leaves its curves.

    Args:
        output_dir: folder of the two files (e.g. ``@ckpt_dir``).
        validator: the evaluator run by ``ValidationHandler`` (``None``: no validation curves).
        filename: file stem.
        interval: write every this many epochs (0: only at the end or on an exception).
        output_transform: maps ``engine.state.output`` to ``{name: float}`` (default:
            :class:`~drd_components.handlers.LossTermsTransform`).
        plot: also write the PNG (needs matplotlib).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        validator: Engine | None = None,
        filename: str = "training_curves",
        interval: int = 1,
        output_transform: Callable[[Any], dict[str, float] | None] | None = None,
        plot: bool = True,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}.")
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.filename = filename
        self.interval = interval
        self.output_transform = output_transform or LossTermsTransform()
        self.plot = plot
        self.iterations: dict[str, list[list[float]]] = {}
        self.epochs: dict[str, list[list[float]]] = {}
        self._epoch_sums: dict[str, list[float]] = {}
        self._trainer: Engine | None = None
        self.status = "not started"

    # ---------------------------------------------------------------- attach
    def attach(self, engine: Engine) -> None:
        """Register on the trainer (and on ``validator`` for its metrics)."""
        self._trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    # ---------------------------------------------------------------- events
    def _started(self, engine: Engine) -> None:
        self.status = "running"

    def _iteration(self, engine: Engine) -> None:
        terms = self.output_transform(engine.state.output) or {}
        length = engine.state.epoch_length or 1
        x = (engine.state.epoch - 1) + ((engine.state.iteration - 1) % length + 1) / length
        for name, value in terms.items():
            self.iterations.setdefault(name, []).append([x, float(value)])
            acc = self._epoch_sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(value)
            acc[1] += 1

    def _epoch(self, engine: Engine) -> None:
        epoch = float(engine.state.epoch)
        for name, (total, count) in self._epoch_sums.items():
            if count:
                self.epochs.setdefault(name, []).append([epoch, total / count])
        self._epoch_sums = {}
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None and getattr(optimizer, "param_groups", None):
            self.epochs.setdefault("lr", []).append([epoch, float(optimizer.param_groups[0]["lr"])])
        if self.interval and engine.state.epoch % self.interval == 0:
            self.write()

    def _validated(self, validator: Engine) -> None:
        epoch = float(self._trainer.state.epoch) if self._trainer is not None else float(validator.state.epoch)
        for name, value in validator.state.metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue  # non-scalar metrics (per-class tensors, ...)
            self.epochs.setdefault(name, []).append([epoch, value])

    def _completed(self, engine: Engine) -> None:
        self.status = "completed"
        self.write()

    def _exception(self, engine: Engine, e: BaseException) -> None:
        self.status = f"failed: {type(e).__name__}: {e}"
        try:
            self.write()
        except Exception as write_error:  # never hide the training error behind a plotting one
            logging.getLogger(__name__).warning(f"could not write training curves: {write_error}")
        raise e

    # ---------------------------------------------------------------- output
    def as_dict(self) -> dict:
        """Everything recorded: ``{"status", "iteration": {name: [[epoch_fraction, value]]},
        "epoch": {name: [[epoch, value]]}, "groups": {name: panel}}``."""
        names = sorted(set(self.iterations) | set(self.epochs))
        return {"status": self.status, "iteration": self.iterations, "epoch": self.epochs,
                "groups": {n: curve_group(n) for n in names}}

    def write(self) -> tuple[Path, Path | None]:
        """Write the JSON (and the PNG) atomically; returns their paths."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.output_dir / f"{self.filename}.json"
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1))
        os.replace(tmp, json_path)
        png_path = self._write_png() if self.plot else None
        return json_path, png_path

    def _write_png(self) -> Path | None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        data = self.as_dict()
        panels: dict[str, list[str]] = {}
        for name, group in data["groups"].items():
            panels.setdefault(group, []).append(name)
        if not panels:
            return None
        order = [t for _, t in GROUPS] + ["other"]
        titles = sorted(panels, key=lambda t: order.index(t) if t in order else len(order))
        fig = Figure(figsize=(5.0 * min(3, len(titles)), 3.6 * math.ceil(len(titles) / 3)))
        for k, title in enumerate(titles):
            ax = fig.add_subplot(math.ceil(len(titles) / 3), min(3, len(titles)), k + 1)
            for name in sorted(panels[title]):
                line = None
                if name in self.iterations:
                    xs, ys = zip(*self.iterations[name])
                    (line,) = ax.plot(xs, ys, lw=0.6, alpha=0.35)
                if name in self.epochs:
                    xs, ys = zip(*self.epochs[name])
                    ax.plot(xs, ys, "o-", ms=3, lw=1.2, label=name, color=None if line is None else line.get_color())
                elif line is not None:
                    line.set_label(name)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            if title == "learning rate":
                ax.set_yscale("log")
        fig.suptitle(f"training curves ({self.status[:80]})", fontsize=9)
        fig.tight_layout()
        png_path = self.output_dir / f"{self.filename}.png"
        tmp = png_path.with_name(png_path.name + ".tmp")
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, png_path)
        return png_path

