"""Short DRD runs of the segmentation bundles on the real datasets under ``DRD_DATA_ROOT``.

``DRD_DATA_ROOT`` must point at a folder holding ``busi/`` (BUSI, official layout) and ``ACDC/``
(ACDC, official release layout); the workspace copy is ``../shared/data``. The data are read in
place. Each test skips, naming what is missing, when the variable is unset or its folder absent.

The teacher is the random-weight stand-in (not a foundation model): these runs check that the
bundles train on the real data, not how much a foundation model helps. Sizes are cut down
through config overrides (small images/patches, a subset of cases, few epochs) to stay within
about three minutes each on two CPU cores. PyTorch runs with ``DRD_TEST_THREADS`` threads
(default 1: on a shared machine two busy OpenMP threads can be an order of magnitude slower than
one) and one data-loader worker.

hippocampus_mri_segmentation has no real copy here; it is exercised on generated volumes in the
MSD layout by ``tests/test_bundles.py``.
"""

import os
import re
import time
from pathlib import Path

import pytest

from tests.bundle_utils import run_bundle, write_standin_teacher

pytestmark = pytest.mark.integration


def _dataset(name: str) -> Path:
    root = os.environ.get("DRD_DATA_ROOT")
    if not root:
        pytest.skip(f"DRD_DATA_ROOT is not set: cannot run the {name} integration test (set it to the folder holding {name}/).")
    path = Path(root).resolve() / name  # absolute: the bundle CLI runs in the bundle folder
    if not path.is_dir():
        pytest.skip(f"DRD_DATA_ROOT={root} has no '{name}' folder: the {name} integration test needs the real dataset there.")
    return path


def _val_curve(log: str, key: str) -> list[float]:
    """The validation ``key`` of every epoch, in order, from the StatsHandler lines."""
    return [float(v) for v in re.findall(rf"Epoch\[\d+\] Metrics -- [^\n]*?\b{key}: ([0-9.]+)", log)]


@pytest.fixture
def threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("DRD_TEST_THREADS", "1"))
    monkeypatch.setenv("MKL_NUM_THREADS", os.environ.get("DRD_TEST_THREADS", "1"))


def test_busi_segmentation_drd_learns_on_real_data(tmp_path, threads):
    data = _dataset("busi")
    teacher = write_standin_teacher(tmp_path / "teacher.pt", spatial_dims=2)
    start = time.perf_counter()
    proc = run_bundle(
        "busi_ultrasound_segmentation",
        ["train.json", "teacher_standin.json"],
        {
            "dataset_dir": str(data),
            "output_dir": str(tmp_path / "out"),
            "teacher_checkpoint": str(teacher),
            "image_size": [64, 64],
            "network_def#patch_size": 8,  # ViT-Tiny with 8x8 patches: an 8x8 token grid
            "max_per_class": 100,  # 200 of the 647 benign/malignant images
            "num_epochs": 8,
            "batch_size": 16,
            "learning_rate": 0.001,
            "num_workers": 1,
        },
        run_id="training",
    )
    elapsed = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    dice = _val_curve(log, "val_mean_dice")
    assert len(dice) == 8, log[-3000:]
    print(f"busi_ultrasound_segmentation: val Dice per epoch {dice}, {elapsed:.0f} s")
    first, best = dice[0], max(dice)
    # an all-background prediction scores 0 (every validation image has a lesion)
    assert best > 0.25, dice
    assert best >= first + 0.1 and best >= 1.5 * first, dice


def test_cardiac_segmentation_drd_learns_on_real_data(tmp_path, threads):
    data = _dataset("ACDC")
    teacher = write_standin_teacher(tmp_path / "teacher.pt", spatial_dims=3)
    start = time.perf_counter()
    proc = run_bundle(
        "cardiac_mri_segmentation",
        ["train.json", "teacher_standin.json"],
        {
            "dataset_dir": str(data),
            "output_dir": str(tmp_path / "out"),
            "teacher_checkpoint": str(teacher),
            "spacing": [4.0, 4.0, 10.0],
            "patch_size": [32, 32, 8],
            # a 4-level UNet (the default has 5 levels for 160 x 160 x 16 patches)
            "unet_channels": [16, 32, 64, 128],
            "unet_strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
            "unet_kernels": [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]],
            "max_patients_per_group": 4,  # 20 of the 50 patients, stratified by group
            "num_epochs": 12,
            "val_interval": 1,
            "batch_size": 2,
            "learning_rate": 0.003,
            "checkpoint_hybrid": False,  # small patches: trade memory for time
            "num_workers": 1,
        },
        run_id="training",
    )
    elapsed = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    dice = _val_curve(log, "val_mean_dice")
    assert len(dice) == 12, log[-3000:]
    print(f"cardiac_mri_segmentation: val mean Dice (RV, myocardium, LV) per epoch {dice}, {elapsed:.0f} s")
    first, best = dice[0], max(dice)
    # an all-background prediction scores 0 for every structure
    assert best > 0.15, dice
    assert best >= first + 0.1 and best >= 2.0 * first, dice
    for key in ("val_dice_rv", "val_dice_myo", "val_dice_lv", "val_lv_ef_mae", "val_rv_ef_mae"):
        assert key in log
