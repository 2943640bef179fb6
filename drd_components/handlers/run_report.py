"""A per-case report of an inference run: ``run_report.csv`` and ``run_report.json``."""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import affine_to_spacing

__all__ = ["RunReportWriter"]

logger = logging.getLogger(__name__)

_COLUMNS = ("case_id", "input_file", "input_shape", "input_spacing", "model_input_shape", "seconds")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class RunReportWriter:
    """Write one row per case to ``run_report.csv`` and the whole run to ``run_report.json``.

    Attach it to the inference evaluator (``handler.attach(evaluator)``; in a bundle, list it in
    the evaluator's ``val_handlers``). Both files are written at the end of the run to temporary
    names and renamed, so an interrupted run never leaves a half-written report.

    Keys read from each decollated batch item (``engine.state.batch``, list of dicts) and output
    item (``engine.state.output``):

    - ``batch[i][image_key]``: a ``MetaTensor``; its ``meta["filename_or_obj"]`` (input file; the
      first slice file for a DICOM series given as a file list), ``meta["spatial_shape"]`` and
      ``meta["original_affine"]`` (shape and voxel spacing of the input as read), and its own shape
      (``model_input_shape``, after preprocessing, without the channel).
    - ``batch[i][case_id_key]``: optional (``inference_datalist`` sets it); else the file name.
    - ``output[i][pred_key]``: classification: the class probabilities (after softmax), giving
      ``predicted_class``, ``predicted_label`` and ``probabilities``; segmentation: a ``MetaTensor``
      whose ``meta["saved_to"]`` names the written file (``SaveImaged(..., savepath_in_metadict=True)``),
      reported as ``output_file``.

    ``seconds`` is the wall time of the iteration (preprocessing excluded; loading is done by the
    data loader) divided by the number of cases in the batch.

    Args:
        output_dir: folder for the two files (created).
        task: ``"classification"`` or ``"segmentation"``.
        class_names: class names in label order (classification; default ``class_0, ...``).
        image_key: batch key of the input image.
        pred_key: output key of the prediction.
        case_id_key: batch key of the case id.
        filename: base name of the files (``.csv`` and ``.json`` are appended).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        task: str = "segmentation",
        class_names: Sequence[str] | None = None,
        image_key: str = "image",
        pred_key: str = "pred",
        case_id_key: str = "case_id",
        filename: str = "run_report",
    ) -> None:
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got '{task}'.")
        self.output_dir = Path(output_dir)
        self.task = task
        self.class_names = list(class_names) if class_names is not None else None
        self.image_key = image_key
        self.pred_key = pred_key
        self.case_id_key = case_id_key
        self.filename = filename
        self.rows: list[dict] = []
        self._started = ""
        self._t_run = 0.0
        self._t_iter = 0.0

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.filename}.csv"

    @property
    def json_path(self) -> Path:
        return self.output_dir / f"{self.filename}.json"

    def attach(self, engine: Engine) -> None:
        """Register the handlers on ``engine`` (run start, iteration start/end, run end)."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._tic)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        self.rows = []
        self._started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self._t_run = time.perf_counter()

    def _tic(self, engine: Engine) -> None:
        self._t_iter = time.perf_counter()

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise ValueError("RunReportWriter needs decollated batches and outputs (the evaluator's decollate=True).")
        seconds = (time.perf_counter() - self._t_iter) / max(len(output), 1)
        for item, out in zip(batch, output):
            self.rows.append(self._row(item, out, seconds))

    def _row(self, item: dict, out: dict, seconds: float) -> dict:
        image = item[self.image_key]
        meta = getattr(image, "meta", {})
        source = str(meta.get("filename_or_obj", ""))
        case_id = item.get(self.case_id_key) or (Path(source).name if source else f"case_{len(self.rows)}")
        shape = meta.get("spatial_shape")
        affine = meta.get("original_affine")
        spacing = None
        if affine is not None and shape is not None:
            spacing = [round(float(s), 6) for s in affine_to_spacing(torch.as_tensor(affine), r=len(_plain(shape)))]
        row: dict[str, Any] = {
            "case_id": str(case_id),
            "input_file": source,
            "input_shape": [int(s) for s in _plain(shape)] if shape is not None else None,
            "input_spacing": spacing,
            "model_input_shape": [int(s) for s in image.shape[1:]],
            "seconds": round(seconds, 4),
        }
        pred = out[self.pred_key]
        if self.task == "classification":
            probs = torch.as_tensor(pred).detach().float().flatten().cpu()
            names = self.class_names or [f"class_{i}" for i in range(probs.numel())]
            if probs.numel() != len(names):
                raise ValueError(
                    f"prediction for '{case_id}' has {probs.numel()} values, expected {len(names)} (classes {names})."
                )
            label = int(probs.argmax())
            row["predicted_label"] = label
            row["predicted_class"] = names[label]
            row["probabilities"] = {n: round(float(p), 6) for n, p in zip(names, probs)}
        else:
            saved = getattr(pred, "meta", {}).get("saved_to")
            if saved is None:
                logger.warning(
                    "no 'saved_to' in the prediction metadata of '%s': add savepath_in_metadict=True to SaveImaged.",
                    case_id,
                )
            row["output_file"] = str(saved) if saved is not None else ""
        return row

    def _write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        extra = ["predicted_label", "predicted_class"] if self.task == "classification" else ["output_file"]
        names = self.class_names or (
            list(self.rows[0]["probabilities"]) if self.rows and self.task == "classification" else []
        )
        header = [*_COLUMNS, *extra, *[f"prob_{n}" for n in names]]
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in self.rows:
                cells = [row.get(c) for c in (*_COLUMNS, *extra)]
                cells = [" x ".join(str(v) for v in c) if isinstance(c, list) else c for c in cells]
                cells += [row.get("probabilities", {}).get(n) for n in names]
                writer.writerow(cells)
        os.replace(tmp, self.csv_path)
        report = {
            "task": self.task,
            "started": self._started,
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self._t_run, 3),
            "cases": len(self.rows),
            "class_names": self.class_names,
            "rows": self.rows,
        }
        tmp = self.json_path.with_name(f".{self.json_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, self.json_path)
