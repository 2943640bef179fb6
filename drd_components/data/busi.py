"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020) on-disk layout and datalists."""

from __future__ import annotations

import os
import re
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["BUSI_CLASSES", "find_busi_cases", "busi_classification_datalist"]

#: class folders of the official release, in label order.
BUSI_CLASSES = ("benign", "malignant", "normal")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
_MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$")


def find_busi_cases(dataset_dir: str | os.PathLike) -> list[dict]:
    """List every BUSI image with its class and mask files.

    The official layout is ``<dataset_dir>/{benign,malignant,normal}/<name>.png`` with masks named
    ``<name>_mask.png``, ``<name>_mask_1.png``, ... next to each image.

    Args:
        dataset_dir: the BUSI root folder.

    Returns:
        records ``{"image", "label", "class_name", "masks"}`` (paths relative to ``dataset_dir``),
        sorted by path.

    Raises:
        FileNotFoundError: when the folder is missing or holds none of the class folders/images.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset_dir '{root}' does not exist: expected the BUSI folder holding {list(BUSI_CLASSES)} sub-folders."
        )
    cases: list[dict] = []
    for label, cls in enumerate(BUSI_CLASSES):
        folder = root / cls
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        masks: dict[str, list[str]] = {}
        images = []
        for p in files:
            m = _MASK_RE.match(p.stem)
            if m:
                masks.setdefault(m.group("stem"), []).append(str(p.relative_to(root)))
            else:
                images.append(p)
        for p in images:
            cases.append(
                {
                    "image": str(p.relative_to(root)),
                    "label": label,
                    "class_name": cls,
                    "masks": sorted(masks.get(p.stem, [])),
                }
            )
    if not cases:
        raise FileNotFoundError(
            f"no BUSI images found under '{root}': expected image files in sub-folders {list(BUSI_CLASSES)} "
            "(masks named '*_mask*.png' are not images)."
        )
    return cases


def busi_classification_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Deterministic, stratified, seeded train/validation/test datalist for BUSI classification.

    Paths are absolute so that MONAI datasets read them wherever the bundle runs. When
    ``output_file`` is given the datalist is also written there (JSON, atomically), for the record.

    Args:
        dataset_dir: the BUSI root folder.
        output_file: optional JSON file to write.
        val_fraction: share of each class for validation.
        test_fraction: share of each class for testing.
        seed: split seed.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image", "label"}`` records.

    Raises:
        FileNotFoundError: see :func:`find_busi_cases`.
    """
    root = Path(dataset_dir).resolve()
    cases = find_busi_cases(root)
    records = [{"image": str(root / c["image"]), "label": c["label"]} for c in cases]
    train_fraction = 1.0 - val_fraction - test_fraction
    parts = stratified_split(
        records, "label", {"training": train_fraction, "validation": val_fraction, "test": test_fraction}, seed
    )
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
