"""A MONAI Label app that serves DRD bundles (students trained with Deep Reprogramming Distillation).

Start it with the ``monailabel`` server (in its own virtualenv, see ``../README.md``)::

    monailabel start_server --app integrations/monai_label/drd_app --studies /data/images \
        --conf bundles /path/to/busi_ultrasound_segmentation,/path/to/busi_ultrasound_classification

``--conf bundles`` is a comma-separated list of bundle folders (absolute, or relative to this app's
``model/`` folder), each with its trained student in ``models/model.pt`` (or ``models/model.ts``).
Segmentation bundles are served by ``DRDSegmentationInferTask`` (``drd_tasks.py``: MONAI Label's stock
``BundleInferTask`` writing ``uint8`` labels; a label image back at the input's size), classification
bundles by ``DRDClassificationInferTask`` (the class probabilities as the JSON result). With ``--conf train true`` segmentation bundles also get a
``DRDBundleTrainTask`` (needs the teacher weights in the bundle). The bundles' configs import
``drd_components``: install it into the server's environment or put the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # drd_tasks.py lives next to this app
from drd_tasks import make_tasks  # noqa: E402

logger = logging.getLogger(__name__)


def _bundle_dirs(app_dir: str, conf: dict) -> list[Path]:
    value = str(conf.get("bundles", "")).strip()
    if not value:
        raise ValueError("the DRD app needs --conf bundles <folder>[,<folder>...] (DRD bundle folders with models/model.pt).")
    out = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        path = Path(item) if os.path.isabs(item) else Path(app_dir) / "model" / item
        if not (path / "configs" / "inference.json").is_file():
            raise ValueError(f"--conf bundles: '{path}' is not a bundle folder (no configs/inference.json).")
        out.append(path.resolve())
    return out


class DRDApp(MONAILabelApp):
    """Serves every bundle of ``--conf bundles`` under its folder name."""

    def __init__(self, app_dir: str, studies: str, conf: dict) -> None:
        self.bundle_dirs = _bundle_dirs(app_dir, conf)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="DRD bundles",
                         description="Students distilled from frozen foundation models with DRD", version="0.2.0")

    def init_infers(self) -> dict:
        _, classification_task, segmentation_task = make_tasks()
        infers = {}
        for path in self.bundle_dirs:
            task = (classification_task if "classification" in path.name else segmentation_task)(str(path), self.conf)
            if not task.is_valid():
                raise ValueError(f"bundle '{path}' cannot be served: it needs models/model.pt or models/model.ts.")
            infers[path.name] = task
        return infers

    def init_trainers(self) -> dict:
        if str(self.conf.get("train", "false")).lower() not in ("1", "true", "yes"):
            return {}
        train_task, _, _ = make_tasks()
        return {p.name: train_task(str(p), self.conf, task="segmentation") for p in self.bundle_dirs if "segmentation" in p.name}
