"""Brain Tumor Classification (MRI) (Bhuvaji et al. 2020): layout, split and duplicate handling.

Official layout: ``<dataset_dir>/Training/<class>/*.jpg`` and ``<dataset_dir>/Testing/<class>/*.jpg``
with the classes ``glioma_tumor``, ``meningioma_tumor``, ``no_tumor``, ``pituitary_tumor``
(label = index in :data:`BRAIN_TUMOR_CLASSES`).

Split: the authors' Testing folder is the test split; validation is carved from Training,
stratified by class (``val_fraction`` of each class, seeded). The release holds the same image in
Training and Testing (64 byte-identical ``no_tumor`` images, more near-identical copies), so by
default every group of exact or near-identical images that spans splits is moved entirely to the
most held-out side present (test, else validation): no test image is also trained on. The moves
are written to ``<output_file stem>_duplicates.json`` next to the datalist.
"""

from __future__ import annotations

import os
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.duplicates import find_duplicate_groups, resolve_cross_split_duplicates
from drd_components.data.splits import stratified_split

__all__ = ["BRAIN_TUMOR_CLASSES", "find_brain_tumor_images", "brain_tumor_mri_split", "brain_tumor_mri_datalist"]

#: class folders in label order.
BRAIN_TUMOR_CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
_SPLIT_FOLDERS = {"Training": "training", "Testing": "test"}
_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def find_brain_tumor_images(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """Every image of the official layout, per official split.

    Args:
        dataset_dir: folder holding ``Training/`` and ``Testing/``.

    Returns:
        ``{"training": [...], "test": [...]}`` of ``{"image" (absolute), "label", "class_name"}``,
        sorted by path.

    Raises:
        FileNotFoundError: when the folders or images are missing.
    """
    root = Path(dataset_dir).resolve()
    layout = f"{root}/{{Training,Testing}}/{{{','.join(BRAIN_TUMOR_CLASSES)}}}/*.jpg"
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir '{root}' does not exist: expected the layout {layout}.")
    found: dict[str, list[dict]] = {}
    for folder, split in _SPLIT_FOLDERS.items():
        records = []
        for label, cls in enumerate(BRAIN_TUMOR_CLASSES):
            d = root / folder / cls
            if not d.is_dir():
                raise FileNotFoundError(f"missing folder '{d}': expected the Brain Tumor MRI layout {layout}.")
            files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in _EXTS)
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(_EXTS)}) in '{d}': expected the layout {layout}.")
            records += [{"image": str(p), "label": label, "class_name": cls} for p in files]
        found[split] = records
    return found


def brain_tumor_mri_split(
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.15,
    seed: int = 0,
    move_duplicates: bool = True,
    near_duplicates: bool = True,
) -> tuple[dict[str, list[dict]], dict]:
    """The datalist and its duplicate report (see the module docstring for the split).

    Args:
        dataset_dir: folder holding ``Training/`` and ``Testing/``.
        val_fraction: share of each Training class used for validation.
        seed: split seed.
        move_duplicates: move cross-split duplicate groups to the held-out side.
        near_duplicates: also detect near-identical images (dHash), not only byte-identical ones.

    Returns:
        ``(parts, report)``; the report holds the counts, the moves and the detection settings.
        With ``move_duplicates=False`` the groups are still detected and reported, nothing moves.
    """
    official = find_brain_tumor_images(dataset_dir)
    parts = stratified_split(
        official["training"], "label", {"training": 1.0 - val_fraction, "validation": val_fraction}, seed
    )
    parts["test"] = official["test"]
    files = [r["image"] for split in parts.values() for r in split]
    groups = find_duplicate_groups(files, near=near_duplicates)
    moved, report = resolve_cross_split_duplicates(parts, groups, keep="test")
    report["near_duplicates"] = near_duplicates
    report["applied"] = move_duplicates
    report["cross_class_groups"] = [
        list(g.files) for g in groups if len({Path(f).parent.name for f in g.files}) > 1
    ]
    return (moved if move_duplicates else parts), report


def brain_tumor_mri_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    move_duplicates: bool = True,
) -> dict[str, list[dict]]:
    """Deterministic datalist of the Brain Tumor MRI set (official test split, see module docstring).

    Args:
        dataset_dir: folder holding ``Training/`` and ``Testing/``.
        output_file: optional JSON file; the duplicate report goes to
            ``<output_file stem>_duplicates.json`` beside it.
        val_fraction: share of each Training class used for validation.
        seed: split seed.
        move_duplicates: keep every cross-split group of exact/near duplicates on the test side
            (validation when the group has no test member).

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label", "class_name"}``.

    Raises:
        FileNotFoundError: when the layout is not found.
    """
    parts, report = brain_tumor_mri_split(dataset_dir, val_fraction, seed, move_duplicates)
    if output_file is not None:
        out = write_datalist(parts, output_file)
        write_datalist(report, out.with_name(f"{out.stem}_duplicates.json"))  # same atomic JSON writer
    return parts
