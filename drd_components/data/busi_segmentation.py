"""BUSI lesion segmentation datalists (images with the union of their mask files)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from drd_components.data.busi import BUSI_CLASSES, find_busi_cases
from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["busi_segmentation_datalist"]

logger = logging.getLogger(__name__)


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def busi_segmentation_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    classes: Sequence[str] = ("benign", "malignant"),
    drop_duplicates: bool = True,
    max_per_class: int | None = None,
) -> dict[str, list[dict]]:
    """Seeded train/validation/test datalist for BUSI lesion segmentation, stratified by class.

    Every record lists all mask files of its image (``masks``); the label is their union
    (:class:`~drd_components.data.seg_transforms.LoadUnionMaskd`). The ``normal`` class has empty
    masks; it is left out by default, as in most BUSI segmentation work (add it to ``classes`` to
    train on lesion-free images too). Images stored twice (``benign (433)`` and
    ``malignant (145)`` in the official release are the same file) are kept once when
    ``drop_duplicates`` (the first by path), so no image is in two parts.

    Args:
        dataset_dir: the BUSI root folder.
        output_file: optional JSON file to write the datalist to.
        val_fraction: share of each class for validation.
        test_fraction: share of each class for testing.
        seed: split seed.
        classes: classes to include.
        drop_duplicates: keep only the first of byte-identical images.
        max_per_class: keep at most this many images per class (in path order) for quick runs.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "masks", "class_name"}`` records
        with absolute paths.

    Raises:
        FileNotFoundError: see :func:`~drd_components.data.busi.find_busi_cases`.
        ValueError: for an unknown class name or an image without mask files.
    """
    unknown = set(classes) - set(BUSI_CLASSES)
    if unknown:
        raise ValueError(f"unknown BUSI classes {sorted(unknown)}; choose from {list(BUSI_CLASSES)}.")
    root = Path(dataset_dir).resolve()
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}
    records = []
    for case in find_busi_cases(root):
        if case["class_name"] not in classes:
            continue
        if not case["masks"]:
            raise ValueError(f"BUSI image '{root / case['image']}' has no mask file ('<name>_mask.png').")
        if drop_duplicates:
            digest = _digest(root / case["image"])
            if digest in seen:
                logger.info("BUSI: '%s' duplicates '%s'; kept once.", case["image"], seen[digest])
                continue
            seen[digest] = case["image"]
        if max_per_class is not None and counts.get(case["class_name"], 0) >= max_per_class:
            continue
        counts[case["class_name"]] = counts.get(case["class_name"], 0) + 1
        records.append(
            {"image": str(root / case["image"]), "masks": [str(root / m) for m in case["masks"]], "class_name": case["class_name"]}
        )
    train_fraction = 1.0 - val_fraction - test_fraction
    parts = stratified_split(
        records, "class_name", {"training": train_fraction, "validation": val_fraction, "test": test_fraction}, seed
    )
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
