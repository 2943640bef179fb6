"""Pediatric chest X-ray pneumonia set (Kermany et al. 2018, "ChestXRay2017"): layout and split.

Official layout: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``; ``dataset_dir`` may be
the ``chest_xray`` folder itself or a folder holding it (also the doubly nested
``chest_xray/chest_xray`` of the Kaggle archive). Labels: NORMAL 0, PNEUMONIA 1.

Split: the official test folder (624 images) is the test split. The official ``val`` folder has
only 16 images (8 per class), too few to select a model on, so it is merged into ``train`` and a
validation split of ``val_fraction`` of each class is carved from the merged set (seeded,
stratified). Patient ids in the file names are not used (the official split is not
patient-disjoint between train and val either).
"""

from __future__ import annotations

import os
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["PNEUMONIA_CLASSES", "find_chest_xray_root", "pneumonia_xray_datalist"]

#: class folders in label order.
PNEUMONIA_CLASSES = ("NORMAL", "PNEUMONIA")
_EXTS = (".jpeg", ".jpg", ".png")
_LAYOUT = "chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (val optional)"


def find_chest_xray_root(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``train/`` and ``test/`` with the class sub-folders.

    Args:
        dataset_dir: the ``chest_xray`` folder or a folder holding it.

    Returns:
        the resolved root.

    Raises:
        FileNotFoundError: when no candidate matches the layout.
    """
    base = Path(dataset_dir).resolve()
    candidates = [base, base / "chest_xray", base / "chest_xray" / "chest_xray"]
    for c in candidates:
        if all((c / s / k).is_dir() for s in ("train", "test") for k in PNEUMONIA_CLASSES):
            return c
    raise FileNotFoundError(f"no chest X-ray layout under '{base}': expected {_LAYOUT} (tried {[str(c) for c in candidates]}).")


def _images(folder: Path, label: int, cls: str) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _EXTS and not p.name.startswith("."))
    return [{"image": str(p), "label": label, "class_name": cls} for p in files]


def pneumonia_xray_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Datalist with the official test split and a stratified validation split (see module docstring).

    Args:
        dataset_dir: the ``chest_xray`` folder or a folder holding it.
        output_file: optional JSON file to write (atomically).
        val_fraction: share of each class of the merged official train + val used for validation.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label", "class_name"}``.

    Raises:
        FileNotFoundError: when the layout or its images are missing.
    """
    root = find_chest_xray_root(dataset_dir)
    pool, test = [], []
    for label, cls in enumerate(PNEUMONIA_CLASSES):
        for split in ("train", "val"):
            if (root / split / cls).is_dir():
                pool += _images(root / split / cls, label, cls)
        test += _images(root / "test" / cls, label, cls)
    for name, records in (("train", pool), ("test", test)):
        for label, cls in enumerate(PNEUMONIA_CLASSES):
            if not any(r["label"] == label for r in records):
                raise FileNotFoundError(f"no {cls} images in the official {name} split under '{root}': expected {_LAYOUT}.")
    parts = stratified_split(pool, "label", {"training": 1.0 - val_fraction, "validation": val_fraction}, seed)
    parts["test"] = test
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
