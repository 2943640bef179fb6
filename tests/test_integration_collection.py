"""Real data of the workspace (``DRD_DATA_ROOT``): the bundles whose dataset is present train briefly and beat chance.

BUSI, BUSI masks and ACDC have their own integration tests; this file covers Brain Tumor MRI and
RetinaMNIST. The teacher is a small random stand-in (no foundation-model weights can be
downloaded here), so these runs check the whole pipeline on real files (official layout, split,
leakage handling, MD5 check, conversion, training, evaluation), not DRD's benefit.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from tests.bundle_utils import write_standin_teacher
from tests.test_bundles import run_workflow

DATA_ROOT = Path(os.environ.get("DRD_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()
pytestmark = pytest.mark.integration


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real dataset not found at {path} (set DRD_DATA_ROOT to the folder holding it)")
    return path


def _majority_rate(items: list[dict]) -> float:
    counts = collections.Counter(int(x["label"]) for x in items)
    return max(counts.values()) / len(items)


def _train_and_test(bundle: str, tmp_path: Path, dataset_dir: Path, overrides: dict) -> tuple[float, float, dict]:
    """Train (stand-in teacher), evaluate the best checkpoint on the test split.

    Returns:
        best validation accuracy, test accuracy, the datalist.
    """
    teacher = write_standin_teacher(tmp_path / "teacher.pt", spatial_dims=2, in_channels=overrides.pop("in_channels_teacher"),
                                    block_inplanes=(16, 32, 64, 128))
    common = dict(overrides, dataset_dir=str(dataset_dir), output_dir=str(tmp_path / "out"), num_workers=0)
    wf = run_workflow(bundle, ["train.json", "teacher_standin.json"], **common, teacher_checkpoint=str(teacher),
                      **{"teacher_def#block_inplanes": [16, 32, 64, 128]})
    best_val = float(wf.parser.get_parsed_content("validate#evaluator").state.best_metric)
    run_workflow(bundle, ["train.json", "evaluate.json"], **common)
    metrics = dict(line.split(",")[:2] for line in (tmp_path / "out" / "eval" / "metrics.csv").read_text().splitlines())
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    return best_val, float(metrics["test_accuracy"]), datalist


def test_brain_tumor_mri_bundle_beats_majority_class_without_leaked_duplicates(tmp_path):
    """Validation (held out from the authors' Training folder) must beat the majority class.

    The authors' Testing folder is a shifted distribution (other sources, other class priors; after
    moving the leaked duplicates it also holds most of the shared no_tumor images): a briefly trained
    student scores near or below chance there while reaching ~0.7 on validation. The test accuracy
    is printed and reported in the bundle README, not asserted.
    """
    data = _require(DATA_ROOT / "brain_tumor_mri")
    val, test, datalist = _train_and_test(
        "brain_tumor_mri_classification", tmp_path, data,
        {"image_size": [64, 64], "num_epochs": 3, "batch_size": 32, "in_channels_teacher": 1,
         "train#dataset#data": "$@datalist['training'][::3]"})  # a third of the training images keeps CI short
    report = json.loads((tmp_path / "out" / "datalist_duplicates.json").read_text())
    assert json.dumps(report).count("no_tumor") > 0  # the known Training/Testing leaks were found and moved
    train_files = {x["image"] for x in datalist["training"] + datalist["validation"]}
    assert not train_files & {x["image"] for x in datalist["test"]}
    majority = _majority_rate(datalist["validation"])
    print(f"brain_tumor_mri_classification: best validation accuracy {val:.4f} (majority-class rate {majority:.4f}); "
          f"test accuracy {test:.4f} (majority-class rate {_majority_rate(datalist['test']):.4f})")
    assert val > majority + 0.1
    assert 0.0 <= test <= 1.0


def test_retina_fundus_bundle_converts_the_official_npz_and_beats_chance(tmp_path):
    data = _require(DATA_ROOT / "medmnist" / "retinamnist.npz").parent
    val, acc, datalist = _train_and_test(
        "retina_fundus_classification", tmp_path, data,
        {"image_size": [32, 32], "num_epochs": 4, "batch_size": 32, "in_channels_teacher": 3})
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [1080, 120, 400]  # the official split
    majority = _majority_rate(datalist["test"])
    print(f"retina_fundus_classification: best validation accuracy {val:.4f}; test accuracy {acc:.4f} "
          f"(majority-class rate {majority:.4f}, uniform 0.2)")
    assert acc > 0.2 + 0.1
