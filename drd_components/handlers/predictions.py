"""Write per-image classification predictions to a CSV file."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["ClassificationPredictionsWriter"]


class ClassificationPredictionsWriter:
    """Collect each image's class probabilities and write ``predictions.csv`` when the run ends.

    Columns: ``filename``, ``predicted_class``, ``predicted_label`` and one ``prob_<class>`` per
    class. The file is written to a temporary name and renamed, so an interrupted run never
    leaves a half-written file.

    Args:
        output_dir: folder for the file (created if needed).
        class_names: class names in label order.
        filename: CSV file name.
        image_key: batch key of the input image (its ``meta["filename_or_obj"]`` names the row).
        pred_key: output key of the probabilities (``C`` values per image, after softmax).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        filename: str = "predictions.csv",
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.output_path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.image_key = image_key
        self.pred_key = pred_key
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        for item, out in zip(batch, output):
            image = item[self.image_key]
            meta = getattr(image, "meta", {})
            name = meta.get("filename_or_obj", f"item_{len(self.rows)}")
            probs = torch.as_tensor(out[self.pred_key]).detach().float().flatten().cpu()
            if probs.numel() != len(self.class_names):
                raise ValueError(
                    f"prediction for '{name}' has {probs.numel()} values, expected {len(self.class_names)} "
                    f"(one per class {self.class_names})."
                )
            label = int(probs.argmax())
            self.rows.append([str(name), self.class_names[label], label] + [f"{float(p):.6f}" for p in probs])

    def _write(self, engine: Engine) -> None:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output_path.with_name(f".{self.output_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "predicted_class", "predicted_label"] + [f"prob_{c}" for c in self.class_names])
            writer.writerows(self.rows)
        os.replace(tmp, self.output_path)
