"""ISIC 2018 Task 1 lesion segmentation (Codella et al. 2019; Tschandl et al. 2018): layout and split.

Official layout (one folder per challenge zip, all inside ``dataset_dir``, possibly one level
deeper):

* ``ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg`` + ``ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png`` (2,594)
* optional ``ISIC2018_Task1-2_Validation_Input`` + ``ISIC2018_Task1_Validation_GroundTruth`` (100)
* optional ``ISIC2018_Task1-2_Test_Input`` + ``ISIC2018_Task1_Test_GroundTruth`` (1,000)

Split: an official Validation or Test pair of folders, when present, is used as that split.
A missing one is carved at random (seeded) from Training: ``val_fraction`` for validation,
``test_fraction`` for test. The inputs' ``ATTRIBUTION.txt``/``LICENSE.txt`` are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["ISIC2018_FOLDERS", "isic2018_pairs", "isic2018_segmentation_datalist"]

#: split -> (input folder, ground-truth folder) of the official release.
ISIC2018_FOLDERS = {
    "training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
_LAYOUT = (
    "ISIC2018_Task1-2_Training_Input/ISIC_*.jpg and ISIC2018_Task1_Training_GroundTruth/ISIC_*_segmentation.png "
    "(optionally the Validation/Test folders of the same names)"
)


def _find_folder(base: Path, name: str) -> Path | None:
    """``base/name``, or ``base/*/name``, or a doubly nested ``name/name`` (as some unzip tools make)."""
    for cand in (base / name, *sorted(base.glob(f"*/{name}"))):
        if cand.is_dir():
            inner = cand / name
            return inner if inner.is_dir() else cand
    return None


def isic2018_pairs(input_dir: Path, truth_dir: Path) -> list[dict]:
    """``{"image", "label"}`` for every ``ISIC_*.jpg`` with its ``ISIC_*_segmentation.png``.

    Raises:
        FileNotFoundError: when there is no image, or an image has no mask.
    """
    images = sorted(p for p in input_dir.glob("ISIC_*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise FileNotFoundError(f"no ISIC_*.jpg images in '{input_dir}': expected {_LAYOUT}.")
    pairs, missing = [], []
    for p in images:
        mask = truth_dir / f"{p.stem}_segmentation.png"
        if mask.is_file():
            pairs.append({"image": str(p), "label": str(mask)})
        else:
            missing.append(p.name)
    if missing:
        raise FileNotFoundError(f"{len(missing)} images in '{input_dir}' have no '<name>_segmentation.png' in '{truth_dir}' (first: {missing[:5]}).")
    return pairs


def isic2018_segmentation_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> dict[str, list[dict]]:
    """Datalist of ISIC 2018 Task 1 with the official splits where present (see module docstring).

    Args:
        dataset_dir: folder holding the official folders.
        output_file: optional JSON file to write (atomically).
        val_fraction: share of Training used for validation when the official validation
            folders are absent.
        seed: split seed.
        test_fraction: share of Training used for testing when the official test folders are
            absent.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label" (mask path)}``.

    Raises:
        FileNotFoundError: when the training folders are missing, or a split's images lack masks.
    """
    base = Path(dataset_dir).resolve()
    official: dict[str, list[dict]] = {}
    for split, (inp, gt) in ISIC2018_FOLDERS.items():
        inp_dir, gt_dir = _find_folder(base, inp), _find_folder(base, gt)
        if inp_dir is not None and gt_dir is not None:
            official[split] = isic2018_pairs(inp_dir, gt_dir)
        elif split == "training":
            raise FileNotFoundError(f"no ISIC 2018 Task 1 training folders under '{base}': expected {_LAYOUT}.")
    fractions = {"training": 1.0}
    for split, frac in (("validation", val_fraction), ("test", test_fraction)):
        if split not in official:
            fractions[split] = frac
            fractions["training"] -= frac
    carved = stratified_split([dict(r, group=0) for r in official["training"]], "group", fractions, seed)
    parts = {}
    for split in ("training", "validation", "test"):
        records = official[split] if split in official and split != "training" else carved[split]
        parts[split] = [{"image": r["image"], "label": r["label"]} for r in records]
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
