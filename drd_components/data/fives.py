"""FIVES fundus vessel segmentation set (Jin et al., Scientific Data 2022): layout and split.

Official layout (figshare archive): ``<root>/train/Original/*.png`` with the vessel masks of the
same file names in ``<root>/train/Ground truth/``, and the same under ``<root>/test/``.
``dataset_dir`` may be that root or a folder holding it (the archive extracts to
``FIVES A Fundus Image Dataset for AI-based Vessel Segmentation/``). File names are
``<n>_<category>.png`` with the category A (AMD), D (diabetic retinopathy), G (glaucoma) or
N (normal).

Split: the official test folder (200 images) is the test split; validation is ``val_fraction``
of the official train folder (600 images), stratified by category when the names carry one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["find_fives_root", "fives_pairs", "fives_datalist"]

_IMAGE_DIR, _MASK_DIR = "Original", "Ground truth"
_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_LAYOUT = "{train,test}/Original/*.png with masks of the same names in {train,test}/Ground truth/"
_CATEGORY = re.compile(r"_([A-Za-z])$")


def _is_root(p: Path) -> bool:
    return all((p / s / d).is_dir() for s in ("train", "test") for d in (_IMAGE_DIR, _MASK_DIR))


def find_fives_root(dataset_dir: str | os.PathLike) -> Path:
    """The folder holding ``train/`` and ``test/`` (``dataset_dir`` or a sub-folder up to two levels).

    Raises:
        FileNotFoundError: when no folder matches the layout.
    """
    base = Path(dataset_dir).resolve()
    if base.is_dir():
        for cand in [base, *sorted(p for p in base.glob("*") if p.is_dir()), *sorted(p for p in base.glob("*/*") if p.is_dir())]:
            if _is_root(cand):
                return cand
    raise FileNotFoundError(f"no FIVES layout under '{base}': expected {_LAYOUT}.")


def fives_pairs(split_dir: Path) -> list[dict]:
    """``{"image", "label", "category"}`` for every image of ``split_dir/Original`` with its mask.

    Raises:
        FileNotFoundError: when the folder has no image or an image has no mask.
    """
    images = sorted(p for p in (split_dir / _IMAGE_DIR).iterdir() if p.is_file() and p.suffix.lower() in _EXTS)
    masks = {p.stem: p for p in (split_dir / _MASK_DIR).iterdir() if p.is_file() and p.suffix.lower() in _EXTS}
    if not images:
        raise FileNotFoundError(f"no images in '{split_dir / _IMAGE_DIR}': expected {_LAYOUT}.")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images in '{split_dir / _IMAGE_DIR}' have no mask in '{_MASK_DIR}' (first: {missing[:5]}).")
    out = []
    for p in images:
        m = _CATEGORY.search(p.stem)
        out.append({"image": str(p), "label": str(masks[p.stem]), "category": m.group(1).upper() if m else ""})
    return out


def fives_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Official-split FIVES datalist with a seeded validation split from train (see module docstring).

    Args:
        dataset_dir: the FIVES root or a folder holding it.
        output_file: optional JSON file to write (atomically).
        val_fraction: share of the official train images (per category) used for validation.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label" (mask path)}``.

    Raises:
        FileNotFoundError: see :func:`find_fives_root` and :func:`fives_pairs`.
    """
    root = find_fives_root(dataset_dir)
    train = fives_pairs(root / "train")
    parts = stratified_split(train, "category", {"training": 1.0 - val_fraction, "validation": val_fraction}, seed)
    parts["test"] = fives_pairs(root / "test")
    parts = {k: [{"image": r["image"], "label": r["label"]} for r in v] for k, v in parts.items()}
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
