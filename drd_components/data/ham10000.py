"""HAM10000 (Tschandl et al. 2018; ISIC 2018 task 3 training set): layout and lesion-grouped split.

Official layout: ``<dataset_dir>/HAM10000_metadata.csv`` (columns ``lesion_id, image_id, dx, ...``)
and the images ``<image_id>.jpg`` in ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/`` or any
other sub-folder. Labels are the 7 diagnoses in sorted order (:data:`HAM10000_CLASSES`).

Split: there is no official split of this set (its ISIC 2018 test images are a separate
download). Several images often show the same lesion, so the split is made on lesions: each
lesion (with all its images) goes to one split, lesions are stratified by diagnosis
(``round(fraction * n_lesions)`` of each diagnosis per split, seeded).
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["HAM10000_CLASSES", "read_ham10000_metadata", "ham10000_datalist"]

#: diagnoses (``dx``) in label order.
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_METADATA = "HAM10000_metadata.csv"
_LAYOUT = f"{_METADATA} (lesion_id,image_id,dx,...) and <image_id>.jpg files in HAM10000_images_part_1/2/"


def read_ham10000_metadata(dataset_dir: str | os.PathLike) -> list[dict]:
    """Rows of the metadata file joined with their image files.

    Args:
        dataset_dir: the HAM10000 folder.

    Returns:
        records ``{"image" (absolute), "label", "class_name", "lesion_id", "image_id"}`` sorted by
        ``image_id``.

    Raises:
        FileNotFoundError: when the folder, the metadata file or an image is missing.
        ValueError: for a metadata file without the needed columns or with an unknown diagnosis.
    """
    root = Path(dataset_dir).resolve()
    meta = root / _METADATA
    if not meta.is_file():
        raise FileNotFoundError(f"'{meta}' not found: expected the HAM10000 layout {_LAYOUT}.")
    images = {p.stem: p for p in root.rglob("*.jpg")}
    records = []
    missing = []
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        need = {"lesion_id", "image_id", "dx"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"'{meta}' lacks columns {sorted(need - set(reader.fieldnames or []))}: expected {_LAYOUT}.")
        for row in reader:
            dx = row["dx"].strip()
            if dx not in HAM10000_CLASSES:
                raise ValueError(f"'{meta}': image {row['image_id']} has unknown dx '{dx}' (expected {HAM10000_CLASSES}).")
            path = images.get(row["image_id"].strip())
            if path is None:
                missing.append(row["image_id"])
                continue
            records.append(
                {"image": str(path), "label": HAM10000_CLASSES.index(dx), "class_name": dx,
                 "lesion_id": row["lesion_id"].strip(), "image_id": row["image_id"].strip()}
            )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in '{meta}' were not found under '{root}' (first: {missing[:5]}): "
            f"expected {_LAYOUT}."
        )
    if not records:
        raise FileNotFoundError(f"'{meta}' lists no image: expected {_LAYOUT}.")
    return sorted(records, key=lambda r: r["image_id"])


def ham10000_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Lesion-grouped, diagnosis-stratified, seeded datalist of HAM10000 (see module docstring).

    Args:
        dataset_dir: the HAM10000 folder.
        output_file: optional JSON file to write (atomically).
        val_fraction: share of each diagnosis's lesions for validation.
        test_fraction: share of each diagnosis's lesions for testing.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image", "label", "class_name", "lesion_id"}``.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_ham10000_metadata`.
    """
    records = read_ham10000_metadata(dataset_dir)
    by_lesion: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_lesion[r["lesion_id"]].append(r)
    # a lesion's label: its most frequent diagnosis (ties: lowest label); HAM10000 lesions have one dx.
    lesions = [
        {"lesion_id": lid, "label": min(Counter(r["label"] for r in rs).most_common(), key=lambda t: (-t[1], t[0]))[0]}
        for lid, rs in sorted(by_lesion.items())
    ]
    fractions = {"training": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    lesion_parts = stratified_split(lesions, "label", fractions, seed)
    parts = {
        split: [
            {k: r[k] for k in ("image", "label", "class_name", "lesion_id")}
            for les in lesion_list
            for r in by_lesion[les["lesion_id"]]
        ]
        for split, lesion_list in lesion_parts.items()
    }
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
