"""Tiny fake 3D datasets in the official on-disk layouts, for data-preparation and bundle smoke tests.

Every ``write_fake_<name>(root)`` writes under ``root`` and returns the folder to pass as
``dataset_dir``. Volumes are small (about 24 x 24 x 12 voxels), ``float32`` images and ``uint8``
labels with values in the task's range, and realistic non-identity affines (LPS-like axis flips,
anisotropic spacing, a non-zero origin) that are the same for an image and its label, so that
``LoadImaged`` + ``Orientationd`` + ``Spacingd`` are exercised. Nothing here is medical data.
:data:`FAKE_DATASETS_3D` maps the preparer names of ``tools/prepare_data_3d.py`` to the writers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from drd_components.data.mosmed import MOSMED_CLASSES
from drd_components.data.msd import write_synthetic_msd_hippocampus

__all__ = [
    "FAKE_SHAPE",
    "FAKE_SPACING",
    "FAKE_DATASETS_3D",
    "write_fake_mosmeddata",
    "write_fake_msd_spleen",
    "write_fake_msd_prostate",
    "write_fake_msd_pancreas",
    "write_fake_msd_hippocampus",
    "write_fake_btcv",
]

FAKE_SHAPE = (24, 24, 12)
FAKE_SPACING = (1.5, 1.5, 3.0)


def _affine(rng: np.random.Generator, spacing=FAKE_SPACING) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = rng.uniform(-80, 80, size=3)
    return affine


def _blob(shape, center, radii) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def _ct_case(rng: np.random.Generator, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU) with ``n_labels`` nested blobs (label k inside label k-1)."""
    shape = FAKE_SHAPE
    image = rng.normal(-900.0, 30.0, size=shape)
    body = _blob(shape, np.array(shape) / 2, np.array(shape) * 0.45)
    image[body] = rng.normal(40.0, 20.0, size=int(body.sum()))
    label = np.zeros(shape, dtype=np.uint8)
    center = np.array(shape) * rng.uniform(0.4, 0.6, size=3)
    radii = np.array([6.0, 5.0, 3.0]) * rng.uniform(0.8, 1.2)
    for k in range(1, n_labels + 1):
        organ = _blob(shape, center, radii / k)
        label[organ] = k
        image[organ] += 60.0 * k
    return image.astype(np.float32), label


def _write_msd_task(
    root: Path,
    task: str,
    n_training: int,
    seed: int,
    labels: dict,
    modality: dict,
    make_case: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
) -> Path:
    folder = root / task
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stem = task.split("_", 1)[1].lower()
    training, test = [], []
    for i in range(n_training + 1):
        image, label = make_case(rng)
        affine = _affine(rng)
        name = f"{stem}_{i + 1}.nii.gz"
        if i < n_training:
            nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / name)
            nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            nib.save(nib.Nifti1Image(image, affine), folder / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
    meta = {
        "name": stem,
        "description": f"fake stand-in in the layout of MSD {task} (not medical data)",
        "tensorImageSize": "4D" if len(modality) > 1 else "3D",
        "modality": modality,
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=4))
    return folder


def write_fake_msd_spleen(root: Path, n_training: int = 8, seed: int = 0) -> Path:
    """Fake ``Task09_Spleen`` (CT, labels 0/1)."""
    return _write_msd_task(
        Path(root), "Task09_Spleen", n_training, seed, {0: "background", 1: "spleen"}, {"0": "CT"},
        lambda rng: _ct_case(rng, 1),
    )


def write_fake_msd_pancreas(root: Path, n_training: int = 8, seed: int = 1) -> Path:
    """Fake ``Task07_Pancreas`` (CT, labels 0/1 pancreas/2 tumour inside the pancreas)."""
    return _write_msd_task(
        Path(root), "Task07_Pancreas", n_training, seed, {0: "background", 1: "pancreas", 2: "cancer"},
        {"0": "CT"}, lambda rng: _ct_case(rng, 2),
    )


def _prostate_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """4D ``(x, y, z, 2)`` image (T2, ADC) and a 3D label with 1 PZ and 2 TZ."""
    shape = FAKE_SHAPE
    center = np.array(shape) * rng.uniform(0.45, 0.55, size=3)
    gland = _blob(shape, center, np.array([7.0, 6.0, 4.0]))
    tz = _blob(shape, center - [0, 1.5, 0], np.array([4.0, 3.5, 3.0]))
    label = np.zeros(shape, dtype=np.uint8)
    label[gland] = 1
    label[tz] = 2
    t2 = rng.normal(300.0, 30.0, size=shape)
    t2[gland] += 200.0
    t2[tz] -= 100.0
    adc = rng.normal(1500.0, 100.0, size=shape)
    adc[gland] -= 400.0
    return np.stack([t2, adc], axis=-1).astype(np.float32), label


def write_fake_msd_prostate(root: Path, n_training: int = 8, seed: int = 2) -> Path:
    """Fake ``Task05_Prostate``: 4D two-modality images (T2, ADC) as in the real task, labels 0/1 PZ/2 TZ."""
    return _write_msd_task(
        Path(root), "Task05_Prostate", n_training, seed, {0: "background", 1: "PZ", 2: "TZ"},
        {"0": "T2", "1": "ADC"}, _prostate_case,
    )


def write_fake_msd_hippocampus(root: Path, n_training: int = 8, seed: int = 3) -> Path:
    """Fake ``Task04_Hippocampus`` via :func:`drd_components.data.msd.write_synthetic_msd_hippocampus`."""
    return write_synthetic_msd_hippocampus(
        Path(root) / "Task04_Hippocampus", n_training=n_training, n_test=1, shape=(20, 24, 16), seed=seed
    )


def write_fake_mosmeddata(root: Path, n_per_class: int = 6, seed: int = 4) -> Path:
    """Fake ``COVID19_1110`` (``studies/CT-0..CT-4/study_XXXX.nii.gz``, plus ``masks/`` and ``dataprep.json``).

    Class ``k`` has ``k`` bright lung-opacity blobs. Returns the ``COVID19_1110`` folder.
    """
    folder = Path(root) / "COVID19_1110"
    rng = np.random.default_rng(seed)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    study = 1
    for k, name in enumerate(MOSMED_CLASSES):
        (folder / "studies" / name).mkdir(parents=True, exist_ok=True)
        for _ in range(n_per_class):
            image = rng.normal(-800.0, 40.0, size=FAKE_SHAPE)
            for _ in range(k):
                center = np.array(FAKE_SHAPE) * rng.uniform(0.25, 0.75, size=3)
                image[_blob(FAKE_SHAPE, center, np.array([4.0, 4.0, 2.0]))] = -200.0
            path = folder / "studies" / name / f"study_{study:04d}.nii.gz"
            nib.save(nib.Nifti1Image(image.astype(np.float32), _affine(rng)), path)
            study += 1
    (folder / "studies" / "CT-0" / "README.txt").write_text("not a study; must be ignored\n")
    (folder / "dataprep.json").write_text(json.dumps({"note": "fake MosMedData layout"}))
    return folder


def write_fake_btcv(root: Path, n_cases: int = 8, seed: int = 5) -> Path:
    """Fake BTCV ``RawData/Training/{img,label}`` (labels 0-13, gallbladder 4 present in every case)
    and one unlabelled ``RawData/Testing/img`` case. Returns ``root`` (a parent of ``RawData``)."""
    root = Path(root)
    train = root / "RawData" / "Training"
    (train / "img").mkdir(parents=True, exist_ok=True)
    (train / "label").mkdir(parents=True, exist_ok=True)
    (root / "RawData" / "Testing" / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_cases + 1):
        image, organs = _ct_case(rng, 3)
        label = np.zeros(FAKE_SHAPE, dtype=np.uint8)
        label[organs == 1] = 6  # liver
        label[organs == 2] = 1  # spleen
        label[organs == 3] = 4  # gallbladder
        label[:2, :2, :] = 13
        affine = _affine(rng)
        if i < n_cases:
            nib.save(nib.Nifti1Image(image, affine), train / "img" / f"img{i + 1:04d}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), train / "label" / f"label{i + 1:04d}.nii.gz")
        else:
            nib.save(nib.Nifti1Image(image, affine), root / "RawData" / "Testing" / "img" / f"img{i + 61:04d}.nii.gz")
    return root


#: preparer name (``tools/prepare_data_3d.py``) -> writer.
FAKE_DATASETS_3D: dict[str, Callable[[Path], Path]] = {
    "mosmeddata": write_fake_mosmeddata,
    "msd_spleen": write_fake_msd_spleen,
    "msd_prostate": write_fake_msd_prostate,
    "msd_pancreas": write_fake_msd_pancreas,
    "msd_hippocampus": write_fake_msd_hippocampus,
    "btcv": write_fake_btcv,
}
