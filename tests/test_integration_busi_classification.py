"""Integration: DRD training of busi_ultrasound_classification on the real BUSI images.

Reads ``$DRD_DATA_ROOT/busi`` in place. Skipped (loudly) when the folder is not there.
"""

import json
import os
import re
from pathlib import Path

import pytest

from tests.bundle_utils import run_bundle, write_standin_teacher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def busi_dir():
    root = os.environ.get("DRD_DATA_ROOT")
    if not root:
        pytest.skip("DRD_DATA_ROOT is not set: real-data integration test skipped")
    path = Path(root).resolve() / "busi"  # absolute: the bundle CLI runs in the bundle folder
    if not (path / "benign").is_dir():
        pytest.skip(f"{path} holds no BUSI copy: real-data integration test skipped")
    return path


def test_drd_beats_majority_class_on_real_busi(busi_dir, tmp_path):
    teacher = write_standin_teacher(tmp_path / "teacher.pt", block_inplanes=(16, 32, 64, 128))
    out = tmp_path / "out"
    proc = run_bundle(
        "busi_ultrasound_classification",
        ["train.json", "teacher_standin.json"],
        {"dataset_dir": str(busi_dir), "output_dir": str(out), "teacher_checkpoint": str(teacher),
         "teacher_def#block_inplanes": [16, 32, 64, 128], "image_size": [64, 64], "num_epochs": 4, "batch_size": 16, "num_workers": 0},
        run_id="training",
    )
    log = proc.stdout + proc.stderr
    best = max(float(v) for v in re.findall(r"val_accuracy: ([0-9.]+)", log))
    split = json.loads((out / "datalist.json").read_text())
    labels = [r["label"] for r in split["validation"]]
    majority = max(labels.count(k) for k in set(labels)) / len(labels)
    print(f"real BUSI: best validation accuracy {best:.4f}, majority-class rate {majority:.4f}")
    assert len(split["training"]) + len(split["validation"]) + len(split["test"]) == 780
    assert best > majority + 0.02
