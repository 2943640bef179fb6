"""Medical Segmentation Decathlon (Simpson et al. 2019; Antonelli et al. 2022) layout and datalists.

A task folder (e.g. ``Task04_Hippocampus``) holds ``dataset.json`` (``labels``, ``modality``,
``training`` as ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` records and
``test`` as a list of ``./imagesTs/`` paths), and the ``imagesTr``, ``labelsTr``, ``imagesTs``
folders. The official test images have no public labels, so training, validation and test parts
are all cut from ``training``.

Tasks used by the bundles (:data:`MSD_TASKS` lists their archives, MD5 digests as in
``monai.apps.DecathlonDataset``, labels and modalities):

- ``Task09_Spleen``: CT, labels 0 background / 1 spleen.
- ``Task05_Prostate``: MRI with two modalities in one 4D NIfTI per case (``x, y, z, 2``: T2 then
  ADC); labels 0 background / 1 peripheral zone (PZ) / 2 transition zone (TZ).
  ``LoadImaged(keys="image", ensure_channel_first=True)`` (or ``LoadImaged`` + ``EnsureChannelFirstd``)
  gives a channel-first ``(2, x, y, z)`` image because the NIfTI reader reports the 4th axis as the
  channel axis; set ``in_channels`` to 2. The label is a plain 3D volume.
- ``Task07_Pancreas``: portal-venous CT, labels 0 background / 1 pancreas / 2 tumour.
- ``Task04_Hippocampus``: MRI, labels 0 background / 1 anterior / 2 posterior.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = [
    "MSD_BASE_URL",
    "MSD_TASKS",
    "find_msd_task_dir",
    "read_msd_dataset_json",
    "msd_datalist",
    "nifti_folder_datalist",
    "write_synthetic_msd_hippocampus",
]

#: mirror of the Decathlon archives used by MONAI (``monai.apps.DecathlonDataset.resource``).
MSD_BASE_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com"

#: the tasks the bundles use: archive URL, MD5 (``monai.apps.DecathlonDataset.md5``), labels, modalities.
MSD_TASKS: dict[str, dict] = {
    "Task09_Spleen": {
        "url": f"{MSD_BASE_URL}/Task09_Spleen.tar",
        "md5": "410d4a301da4e5b2f6f86ec3ddba524e",
        "labels": {0: "background", 1: "spleen"},
        "modalities": ("CT",),
    },
    "Task05_Prostate": {
        "url": f"{MSD_BASE_URL}/Task05_Prostate.tar",
        "md5": "35138f08b1efaef89d7424d2bcc928db",
        "labels": {0: "background", 1: "peripheral_zone", 2: "transition_zone"},
        "modalities": ("T2", "ADC"),
    },
    "Task07_Pancreas": {
        "url": f"{MSD_BASE_URL}/Task07_Pancreas.tar",
        "md5": "4f7080cfca169fa8066d17ce6eb061e4",
        "labels": {0: "background", 1: "pancreas", 2: "tumour"},
        "modalities": ("CT",),
    },
    "Task04_Hippocampus": {
        "url": f"{MSD_BASE_URL}/Task04_Hippocampus.tar",
        "md5": "9d24dba78a72977dbd1d2e110310f31b",
        "labels": {0: "background", 1: "anterior", 2: "posterior"},
        "modalities": ("MRI",),
    },
}


def find_msd_task_dir(root: str | os.PathLike, task: str) -> Path:
    """Find the folder of MSD ``task`` (e.g. ``Task09_Spleen``) holding ``dataset.json``.

    ``root`` may be the task folder itself (any folder with a ``dataset.json``, whatever its name) or
    any parent of it (e.g. an extraction folder).

    Args:
        root: folder to search.
        task: task folder name.

    Returns:
        the task folder.

    Raises:
        FileNotFoundError: when no ``<task>/dataset.json`` is found under ``root``.
    """
    base = Path(root)
    if (base / "dataset.json").is_file():
        return base.resolve()
    candidates = sorted(p.parent for p in base.rglob(f"{task}/dataset.json") if not p.parent.name.startswith("._"))
    if not candidates:
        raise FileNotFoundError(
            f"no MSD task folder '{task}' with dataset.json under '{base}': expected "
            f"'{task}/dataset.json', '{task}/imagesTr/*.nii.gz', '{task}/labelsTr/*.nii.gz' (the layout of {task}.tar)."
        )
    return candidates[0].resolve()


def read_msd_dataset_json(dataset_dir: str | os.PathLike) -> dict:
    """Read ``dataset.json`` of an MSD task folder.

    Raises:
        FileNotFoundError: when the folder or its ``dataset.json`` is missing.
        ValueError: when the file has no ``training`` list.
    """
    root = Path(dataset_dir)
    path = root / "dataset.json"
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir '{root}' does not exist: expected an MSD task folder with dataset.json.")
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' not found: expected the MSD task's dataset.json in dataset_dir.")
    meta = json.loads(path.read_text())
    if not isinstance(meta.get("training"), list):
        raise ValueError(f"'{path}' has no 'training' list.")
    return meta


def _resolve(root: Path, rel: str) -> str:
    return str((root / rel).resolve())


def msd_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_cases: int | None = None,
) -> dict[str, list[dict]]:
    """Seeded train/validation/test split of an MSD task's labelled cases.

    Entries whose files are missing are an error (a partial download should not train silently);
    macOS resource-fork entries (``._*``) are ignored.

    Args:
        dataset_dir: the MSD task folder.
        output_file: optional JSON file to write the datalist to.
        val_fraction: share of cases for validation.
        test_fraction: share of cases for testing.
        seed: split seed.
        max_cases: keep the first ``max_cases`` cases (by file name) for quick runs.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label"}`` with absolute paths.

    Raises:
        FileNotFoundError: see :func:`read_msd_dataset_json`, or when listed files are missing.
    """
    root = Path(dataset_dir).resolve()
    meta = read_msd_dataset_json(root)
    records = []
    for item in meta["training"]:
        if Path(item["image"]).name.startswith("._"):
            continue
        rec = {"image": _resolve(root, item["image"]), "label": _resolve(root, item["label"])}
        for key, path in rec.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{key} file '{path}' listed in {root / 'dataset.json'} does not exist.")
        records.append(rec)
    records.sort(key=lambda r: r["image"])
    if max_cases is not None:
        records = records[:max_cases]
    for r in records:
        r["_all"] = 0
    train_fraction = 1.0 - val_fraction - test_fraction
    parts = stratified_split(records, "_all", {"training": train_fraction, "validation": val_fraction, "test": test_fraction}, seed)
    parts = {k: [{"image": r["image"], "label": r["label"]} for r in v] for k, v in parts.items()}
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts


def nifti_folder_datalist(
    input_dir: str | os.PathLike, recursive: bool = False, exclude_suffixes: Sequence[str] = ("_gt",)
) -> list[dict]:
    """``[{"image": path}, ...]`` for every ``.nii``/``.nii.gz`` file in ``input_dir`` (sorted), skipping
    macOS resource forks (``._*``) and files whose name (without extension) ends with one of
    ``exclude_suffixes`` (ground truth ``*_gt``; ACDC's 4D cine ``*_4d``).

    Args:
        input_dir: folder to scan.
        recursive: also scan sub-folders (e.g. ACDC's ``patientXXX/`` folders).
        exclude_suffixes: name endings to skip.

    Raises:
        FileNotFoundError: when the folder does not exist or holds no NIfTI file.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir '{root}' does not exist or is not a folder.")
    pattern = "**/*" if recursive else "*"
    suffixes = tuple(exclude_suffixes)
    files = sorted(
        p
        for p in root.glob(pattern)
        if p.is_file()
        and (p.name.endswith(".nii.gz") or p.name.endswith(".nii"))
        and not p.name.startswith("._")
        and not (suffixes and p.name.split(".nii")[0].endswith(suffixes))
    )
    if not files:
        raise FileNotFoundError(f"no NIfTI files (.nii, .nii.gz) found in input_dir '{root}'.")
    return [{"image": str(p.resolve())} for p in files]


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def write_synthetic_msd_hippocampus(
    output_dir: str | os.PathLike,
    n_training: int = 8,
    n_test: int = 2,
    shape: tuple[int, int, int] = (32, 40, 32),
    seed: int = 0,
) -> Path:
    """Write a tiny synthetic task in the layout of MSD ``Task04_Hippocampus``.

    Each case is a brain-MRI-like volume (``float32``) with two adjacent structures (1 anterior,
    2 posterior). Like the real task the voxels are 1 mm, but the affines are realistic rather
    than identity: axis flips (LPS-like ``diag(-1, -1, 1)``), a non-zero origin that changes per
    case, and occasionally a small oblique rotation, so that orientation handling and the
    restoration of the input's affine are exercised. The same sizes vary a little per case, as in
    the real data. Nothing here is medical data.

    Args:
        output_dir: the task folder to create.
        n_training: labelled cases.
        n_test: unlabelled ``imagesTs`` cases.
        shape: base volume shape (each case varies by up to 3 voxels per axis).
        seed: random seed.

    Returns:
        the task folder.
    """
    import nibabel as nib

    root = Path(output_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    training, test = [], []
    for i in range(n_training + n_test):
        name = f"hippocampus_{i * 3 + 1:03d}.nii.gz"
        shp = tuple(int(s + rng.integers(0, 4)) for s in shape)
        center = np.array(shp) * rng.uniform(0.4, 0.6, size=3)
        radii = np.array(shp) * np.array([0.14, 0.12, 0.14]) * rng.uniform(0.85, 1.15)
        anterior = _ellipsoid(shp, center - [0, radii[1] * 0.9, 0], radii)
        posterior = _ellipsoid(shp, center + [0, radii[1] * 0.9, 0], radii * [0.9, 1.0, 0.9]) & ~anterior
        label = np.zeros(shp, dtype=np.uint8)
        label[anterior] = 1
        label[posterior] = 2
        image = 40.0 + 30.0 * rng.random(shp)
        image[anterior] += 60
        image[posterior] += 100
        image = image.astype(np.float32)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:3, 3] = rng.uniform(-60, 60, size=3)
        if i % 3 == 2:  # slightly oblique acquisition
            a = np.deg2rad(rng.uniform(3, 8))
            rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
            affine[:3, :3] = rot @ affine[:3, :3]
        img_rel = f"./{'imagesTr' if i < n_training else 'imagesTs'}/{name}"
        nib.save(nib.Nifti1Image(image, affine), root / img_rel)
        if i < n_training:
            nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
            training.append({"image": img_rel, "label": f"./labelsTr/{name}"})
        else:
            test.append(img_rel)
    meta = {
        "name": "Hippocampus",
        "description": "Left and right hippocampus segmentation (synthetic stand-in in the MSD layout)",
        "reference": "synthetic",
        "licence": "CC-BY-SA 4.0",
        "release": "synthetic",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root
