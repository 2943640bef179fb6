"""Cardiac functional indices: LV/RV ejection fraction from ED and ES segmentations."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["ejection_fraction", "EjectionFractionError"]


def ejection_fraction(edv: float, esv: float) -> float:
    """``100 * (EDV - ESV) / EDV`` in percent (``nan`` for an empty ED volume)."""
    return 100.0 * (edv - esv) / edv if edv > 0 else float("nan")


def _volume_ml(seg: torch.Tensor, label: int) -> float:
    """Volume of ``label`` in mL: voxel count times the voxel volume from the affine (1 mm^3 if none)."""
    t = torch.as_tensor(seg)
    count = float((t[label] > 0.5).sum()) if t.shape[0] > 1 else float((t[0].round() == label).sum())
    affine = getattr(seg, "affine", None)
    voxel = 1.0
    if affine is not None:
        a = torch.as_tensor(affine, dtype=torch.float64)
        sd = t.ndim - 1
        voxel = float(abs(torch.linalg.det(a[:sd, :sd])))
    return count * voxel / 1000.0


class EjectionFractionError:
    """Ignite handler: LV and RV ejection fractions from the predicted and the reference ED/ES
    segmentations of each patient, and their absolute errors.

    For every evaluated volume it reads the patient id and the phase (``"ED"``/``"ES"``) from the
    batch and the cavity volumes from ``pred`` and ``label`` (one-hot ``C x spatial`` or label maps
    ``1 x spatial``; voxel volume from the affine). When the epoch ends, patients with both phases
    get ``EF = 100 (EDV - ESV) / EDV`` for each cavity; the mean absolute errors (percentage points)
    go to ``engine.state.metrics`` as ``<prefix>lv_ef_mae`` and ``<prefix>rv_ef_mae`` (so that
    ``StatsHandler`` and ``MetricsSaver`` report them) and, with ``output_dir``, one row per patient
    to ``ejection_fraction.csv``. Attach it before those handlers.

    Args:
        lv_label: label of the LV cavity.
        rv_label: label of the RV cavity.
        patient_key: batch key of the patient id.
        phase_key: batch key of the phase.
        pred_key: output key of the prediction (after post-processing).
        label_key: output key of the reference.
        prefix: prefix of the metric names.
        output_dir: folder for the per-patient CSV (``None``: no file).
    """

    def __init__(
        self,
        lv_label: int = 3,
        rv_label: int = 1,
        patient_key: str = "patient",
        phase_key: str = "phase",
        pred_key: str = "pred",
        label_key: str = "label",
        prefix: str = "",
        output_dir: str | os.PathLike | None = None,
    ) -> None:
        self.labels = {"lv": lv_label, "rv": rv_label}
        self.patient_key = patient_key
        self.phase_key = phase_key
        self.pred_key = pred_key
        self.label_key = label_key
        self.prefix = prefix
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.volumes: dict[str, dict[str, dict[str, float]]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)

    def _reset(self, engine: Engine) -> None:
        self.volumes = {}

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, dict):
            raise TypeError("EjectionFractionError needs decollated outputs (MONAI engines with post-processing).")
        for item, out in zip(batch, output):
            patient, phase = item.get(self.patient_key), item.get(self.phase_key)
            if patient is None or phase not in ("ED", "ES"):
                continue
            rec = self.volumes.setdefault(str(patient), {})
            vols = {}
            for name, lab in self.labels.items():
                vols[f"pred_{name}"] = _volume_ml(out[self.pred_key], lab)
                vols[f"ref_{name}"] = _volume_ml(out[self.label_key], lab)
            rec[str(phase)] = vols

    def results(self) -> list[dict[str, Any]]:
        """Per-patient volumes, ejection fractions and errors of the patients seen with both phases."""
        rows = []
        for patient in sorted(self.volumes):
            v = self.volumes[patient]
            if "ED" not in v or "ES" not in v:
                continue
            row: dict[str, Any] = {"patient": patient}
            for name in self.labels:
                for src in ("pred", "ref"):
                    edv, esv = v["ED"][f"{src}_{name}"], v["ES"][f"{src}_{name}"]
                    row[f"{src}_{name}_edv_ml"] = edv
                    row[f"{src}_{name}_esv_ml"] = esv
                    row[f"{src}_{name}_ef"] = ejection_fraction(edv, esv)
                row[f"{name}_ef_abs_error"] = abs(row[f"pred_{name}_ef"] - row[f"ref_{name}_ef"])
            rows.append(row)
        return rows

    def _compute(self, engine: Engine) -> None:
        rows = self.results()
        for name in self.labels:
            errs = [r[f"{name}_ef_abs_error"] for r in rows if not math.isnan(r[f"{name}_ef_abs_error"])]
            engine.state.metrics[f"{self.prefix}{name}_ef_mae"] = sum(errs) / len(errs) if errs else float("nan")
        if self.output_dir is not None and rows:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / "ejection_fraction.csv"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                for r in rows:
                    writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
            os.replace(tmp, path)
