"""Your own data: Decathlon-format datalists, read by every bundle and written from a folder.

A *user datalist* is a JSON file in MONAI's Decathlon datalist format::

    {"training":   [{"image": "images/a.png", "label": "masks/a.png"}, ...],
     "validation": [...],
     "test":       [...]}

``label`` is the mask file for segmentation and the class (an integer index, or a name of the
bundle's ``class_names``) for classification. Relative paths are resolved against the JSON file's
folder first, then against ``dataset_dir``. Every bundle reads such a file when it is given
``--datalist_file``: :func:`load_user_datalist` replaces the dataset-specific reader and split, and
the result goes through the same start-up check (:func:`~drd_components.data.validation.validate_datalist`).

:func:`make_datalist` writes one from an image folder (with a mask folder, or class sub-folders),
split at random or, when a grouping is given (a CSV column or a file-name regex: patient, video,
...), by group with :func:`grouped_split`, so that no group is in more than one split.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split
from drd_components.data.validation import DataValidationError

__all__ = [
    "SPLITS",
    "load_user_datalist",
    "required_splits",
    "grouped_split",
    "find_image_mask_pairs",
    "find_class_folder_images",
    "groups_from_regex",
    "groups_from_csv",
    "make_datalist",
    "split_summary",
]

logger = logging.getLogger(__name__)

#: the splits a user datalist must hold (Decathlon names)
SPLITS = ("training", "validation", "test")
#: image files accepted by :func:`make_datalist` (2D images and NIfTI volumes)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


def required_splits(datalist_file: str | os.PathLike | None) -> tuple[str, ...]:
    """Splits the start-up check requires: all of :data:`SPLITS` for a user datalist (evaluation
    reads ``test``), ``training`` alone for the dataset readers (some have no test split)."""
    return SPLITS if datalist_file else ("training",)


def _resolve(path: str, bases: Sequence[Path]) -> str:
    """The first existing ``base / path`` (``path`` itself when absolute); the first candidate when
    none exists, so that the start-up check reports a full path."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    candidates = [(b / p) for b in bases]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    return str(candidates[0].absolute()) if candidates else str(p.absolute())


def load_user_datalist(
    datalist_file: str | os.PathLike | None,
    dataset_dir: str | os.PathLike | None = None,
    output_file: str | os.PathLike | None = None,
    task: str = "segmentation",
    class_names: Sequence[str] | None = None,
    mask_key: str = "label",
    path_keys: Sequence[str] = ("image", "label"),
) -> dict[str, list[dict]]:
    """Read a Decathlon-format datalist and resolve its paths for a bundle.

    Items may be dicts or plain strings (an image path, as in MSD's ``test`` list). Relative
    paths under ``path_keys`` are resolved against the JSON file's folder, then against
    ``dataset_dir``. Classification labels given as class names are turned into indices of
    ``class_names``; everything else is left as it is, so that the start-up check lists every
    remaining problem at once (missing files, unknown labels, wrong sizes). Keys other than lists
    and other lists (``"name"``, ``"numTraining"``, ``"class_names"``, ...) are ignored: only
    :data:`SPLITS` are read.

    Args:
        datalist_file: the JSON file (relative paths are relative to the working directory).
        dataset_dir: second base folder for relative paths (``None``: the JSON folder only).
        output_file: where to write the resolved datalist (the bundle's ``datalist.json``); ``None``: not written.
        task: ``"classification"`` or ``"segmentation"``.
        class_names: the bundle's classes (classification labels may name them).
        mask_key: where the bundle's loader reads segmentation masks; when it is not ``"label"``
            (BUSI's ``"masks"``, a list of mask files), the label file is also given there as a
            one-element list.
        path_keys: keys holding file paths.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` (the splits the file has).

    Raises:
        DataValidationError: the file is missing, is not JSON, or is not a JSON object of lists
            (naming the file and what was expected).
    """
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}.")
    if datalist_file is None or str(datalist_file).strip() == "":
        raise DataValidationError(["'datalist_file' is not set: this bundle reads your own data; pass --datalist_file "
                                   "<Decathlon-format JSON> (tools/make_datalist.py writes one)."])
    path = Path(datalist_file).expanduser()
    if not path.is_file():
        raise DataValidationError([f"'datalist_file' = '{path.absolute()}' does not exist: expected a Decathlon-format "
                                   "JSON datalist ({\"training\": [...], \"validation\": [...], \"test\": [...]})."])
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataValidationError([f"'datalist_file' = '{path}' is not valid JSON ({e})."]) from e
    if not isinstance(raw, Mapping):
        raise DataValidationError([f"'datalist_file' = '{path}' holds a JSON {type(raw).__name__}: expected an object "
                                   f"with the lists {', '.join(SPLITS)}."])
    bases = [path.resolve().parent] + ([Path(dataset_dir).expanduser()] if dataset_dir else [])
    index = {str(n).lower(): i for i, n in enumerate(class_names or ())}
    out: dict[str, list[Any]] = {}
    for split, items in raw.items():
        if split not in SPLITS:
            continue
        if not isinstance(items, list):
            out[split] = items  # the start-up check names it
            continue
        records: list[Any] = []
        for item in items:
            if isinstance(item, str):
                item = {"image": item}
            if not isinstance(item, Mapping):
                records.append(item)  # reported by the start-up check
                continue
            rec = dict(item)
            for key in path_keys:
                value = rec.get(key)
                if key == "label" and task == "classification":
                    continue
                if isinstance(value, str):
                    rec[key] = _resolve(value, bases)
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    rec[key] = [_resolve(v, bases) for v in value]
            if task == "classification" and isinstance(rec.get("label"), str):
                name = rec["label"].strip()
                if name.lower() in index:
                    rec["label"] = index[name.lower()]
                elif re.fullmatch(r"\d+", name):
                    rec["label"] = int(name)
            if task == "segmentation" and mask_key != "label" and "label" in rec and mask_key not in rec:
                rec[mask_key] = rec["label"] if isinstance(rec["label"], list) else [rec["label"]]
            records.append(rec)
        out[split] = records
    logger.info("user datalist %s: %s", path, ", ".join(f"{k} {len(v)}" for k, v in out.items() if isinstance(v, list)))
    if output_file is not None:
        write_datalist(out, output_file)
    return out


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------
def _check_fractions(fractions: Mapping[str, float]) -> None:
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}.")


def grouped_split(
    items: Sequence[Mapping[str, Any]],
    group_key: str = "group",
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Split items so that all items of one group land in the same part.

    Groups are sorted and shuffled with ``seed``. Every part with a positive fraction first gets
    one group; the other groups are then handed out one by one, each to the part that is furthest
    below its target item count (``fraction * n_items``, relative to it), so the parts' sizes follow
    the fractions as closely as the group sizes allow. The result depends only on the set of items
    and ``seed``.

    Args:
        items: records, each with a hashable ``group_key`` entry (patient, video, ...).
        group_key: key holding the group id.
        fractions: part name -> fraction (sum 1); default ``training 0.8, validation 0.1, test 0.1``.
        seed: seed of the shuffle.

    Returns:
        part name -> list of records (copies), each part ordered by group then by ``repr``.

    Raises:
        ValueError: invalid fractions, an item without ``group_key``, or fewer groups than parts
            with a positive fraction.
    """
    fractions = dict(fractions or {"training": 0.8, "validation": 0.1, "test": 0.1})
    _check_fractions(fractions)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for i, item in enumerate(items):
        if group_key not in item:
            raise ValueError(f"item {i} ({dict(item)}) has no '{group_key}' entry to group on.")
        by_group[str(item[group_key])].append(dict(item))
    wanted = [name for name, f in fractions.items() if f > 0]
    if len(by_group) < len(wanted):
        raise ValueError(f"{len(by_group)} group(s) cannot fill the {len(wanted)} parts {wanted} without a group in two parts.")
    order = sorted(by_group)
    random.Random(seed).shuffle(order)
    n = sum(len(v) for v in by_group.values())
    target = {name: fractions[name] * n for name in fractions}
    count = {name: 0 for name in fractions}
    assigned: dict[str, list[str]] = {name: [] for name in fractions}
    # first one group for every part with a positive fraction (smallest parts first), then by deficit
    for name in sorted(wanted, key=lambda k: fractions[k]):
        g = order.pop(0)
        assigned[name].append(g)
        count[name] += len(by_group[g])
    for g in order:
        name = max(wanted, key=lambda k: ((target[k] - count[k]) / max(target[k], 1e-9), -list(fractions).index(k)))
        assigned[name].append(g)
        count[name] += len(by_group[g])
    return {name: [rec for g in sorted(gs) for rec in sorted(by_group[g], key=repr)] for name, gs in assigned.items()}


def split_summary(parts: Mapping[str, Sequence[Mapping]], group_key: str | None = "group", label_key: str | None = None) -> dict:
    """Counts per part (items, groups, labels) and the groups found in more than one part.

    Returns:
        ``{"parts": {name: {"items": n, "groups": g, "labels": {...}}}, "leaked_groups": [...]}``.
    """
    where: dict[str, set] = defaultdict(set)
    summary: dict[str, dict] = {}
    for name, recs in parts.items():
        entry: dict[str, Any] = {"items": len(recs)}
        if group_key:
            groups = {str(r[group_key]) for r in recs if group_key in r}
            entry["groups"] = len(groups)
            for g in groups:
                where[g].add(name)
        if label_key:
            entry["labels"] = dict(sorted(Counter(str(r.get(label_key)) for r in recs).items()))
        summary[name] = entry
    return {"parts": summary, "leaked_groups": sorted(g for g, s in where.items() if len(s) > 1)}


# ------------------------------------------------------------------------------------------------
# folders -> records
# ------------------------------------------------------------------------------------------------
def _is_image(p: Path, extensions: Sequence[str]) -> bool:
    name = p.name.lower()
    return p.is_file() and not p.name.startswith(".") and name.endswith(tuple(e.lower() for e in extensions))


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".nii.gz",):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


def find_image_mask_pairs(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    mask_suffix: str = "",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[dict]:
    """``[{"image", "label"}]`` for every image of ``image_dir`` with its mask in ``mask_dir``.

    A mask matches an image when its stem is the image's stem plus ``mask_suffix`` (any accepted
    extension: ``a.jpg`` matches ``a.png`` or, with ``mask_suffix="_mask"``, ``a_mask.png``).

    Raises:
        FileNotFoundError: a folder is missing or empty, or images lack a mask (every one listed).
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for key, folder in (("image_dir", image_dir), ("mask_dir", mask_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{key} '{folder}' does not exist or is not a folder.")
    masks = {_stem(p): p for p in sorted(mask_dir.iterdir()) if _is_image(p, extensions)}
    images = [p for p in sorted(image_dir.iterdir()) if _is_image(p, extensions)]
    if not images:
        raise FileNotFoundError(f"image_dir '{image_dir}' holds no image file ({', '.join(extensions)}).")
    records, missing = [], []
    for img in images:
        mask = masks.get(_stem(img) + mask_suffix)
        if mask is None:
            missing.append(img.name)
        else:
            records.append({"image": str(img.resolve()), "label": str(mask.resolve())})
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} image(s) of '{image_dir}' have no mask '<stem>{mask_suffix}.<ext>' in "
                                f"'{mask_dir}': {shown}.")
    return records


def find_class_folder_images(
    image_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[list[dict], list[str]]:
    """``[{"image", "label"}]`` from class sub-folders ``image_dir/<class>/**/<image>``.

    Args:
        image_dir: folder with one sub-folder per class.
        class_names: the classes in label order (default: the sub-folder names, sorted).
        extensions: accepted file endings.

    Returns:
        the records (``label`` = index in ``class_names``) and the class names.

    Raises:
        FileNotFoundError: the folder or a named class folder is missing, or a class has no image.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image_dir '{root}' does not exist or is not a folder.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(class_names) if class_names else found
    if not names:
        raise FileNotFoundError(f"image_dir '{root}' has no class sub-folders (expected image_dir/<class>/<image>).")
    records, problems = [], []
    for label, name in enumerate(names):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if _is_image(p, extensions)) if folder.is_dir() else []
        if not files:
            problems.append(f"class '{name}': no image in '{folder}'")
        records += [{"image": str(p.resolve()), "label": label} for p in files]
    if problems:
        raise FileNotFoundError("; ".join(problems) + ".")
    return records, names


def groups_from_regex(records: list[dict], pattern: str, key: str = "image", group_key: str = "group") -> list[dict]:
    """Add ``group_key`` to every record from a regex searched in its file name.

    The group is the named group ``group`` when the pattern has one, else the first group, else
    the whole match (e.g. ``r"^(patient\\d+)_"``, ``r"video(?P<group>\\d+)"``).

    Raises:
        ValueError: the pattern does not compile or does not match some file names (listed).
    """
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"group_regex {pattern!r} is not a valid regular expression: {e}.") from e
    unmatched = []
    for rec in records:
        name = Path(rec[key]).name
        m = rx.search(name)
        if m is None:
            unmatched.append(name)
            continue
        rec[group_key] = m.group("group") if "group" in rx.groupindex else (m.group(1) if rx.groups else m.group(0))
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        raise ValueError(f"group_regex {pattern!r} does not match {len(unmatched)} file name(s): {shown}.")
    return records


def groups_from_csv(
    records: list[dict], csv_file: str | os.PathLike, group_column: str, image_column: str | None = None,
    key: str = "image", group_key: str = "group",
) -> list[dict]:
    """Add ``group_key`` to every record from a CSV table (one row per image).

    A row matches a record when its ``image_column`` value is the file's name, its stem, or its
    path relative to anywhere above it.

    Args:
        records: the records.
        csv_file: the table.
        group_column: column holding the group (patient, video, ...).
        image_column: column naming the image (default: the first column).
        key: record key of the image path.
        group_key: record key to write.

    Raises:
        ValueError: the file or a column is missing, or images have no row (listed).
    """
    path = Path(csv_file)
    if not path.is_file():
        raise ValueError(f"group_csv '{path}' does not exist.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    image_column = image_column or (columns[0] if columns else None)
    for col, what in ((group_column, "group_column"), (image_column, "image_column")):
        if col not in columns:
            raise ValueError(f"{what} {col!r} is not a column of '{path}' (columns: {columns}).")
    table = {}
    for row in rows:
        name = str(row[image_column]).strip().replace("\\", "/")
        table[name] = row[group_column]
        table.setdefault(Path(name).name, row[group_column])
        table.setdefault(_stem(Path(name)), row[group_column])
    missing = []
    for rec in records:
        p = Path(rec[key])
        candidates = [p.name, _stem(p)] + ["/".join(p.parts[-k:]) for k in range(2, len(p.parts) + 1)]
        group = next((table[c] for c in candidates if c in table), None)
        if group is None or str(group).strip() == "":
            missing.append(p.name)
        else:
            rec[group_key] = str(group).strip()
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} image(s) have no '{group_column}' in '{path}' (matched on column "
                         f"{image_column!r}): {shown}.")
    return records


def _subset(records: list[dict], max_items: int, group_key: str | None, seed: int) -> list[dict]:
    """Whole groups (or items) drawn with ``seed`` until ``max_items`` items are kept."""
    if max_items < 1:
        raise ValueError(f"max_items must be positive, got {max_items}.")
    by_group: dict[str, list[dict]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_group[str(rec[group_key]) if group_key else str(i)].append(rec)
    order = sorted(by_group)
    random.Random(seed).shuffle(order)
    kept: list[dict] = []
    for g in order:
        if len(kept) >= max_items:
            break
        kept += by_group[g]
    return kept


def _relative(path: str, base: Path | None) -> str:
    if base is None:
        return str(Path(path).resolve())
    rel = os.path.relpath(Path(path).resolve(), base.resolve())
    return rel.replace(os.sep, "/")


def make_datalist(
    image_dir: str | os.PathLike,
    output_file: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    mask_suffix: str = "",
    class_names: Sequence[str] | None = None,
    group_regex: str | None = None,
    group_csv: str | os.PathLike | None = None,
    group_column: str | None = None,
    csv_image_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    base_dir: str | os.PathLike | None = None,
    absolute_paths: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    max_items: int | None = None,
) -> dict:
    """Write a Decathlon-format datalist (training / validation / test) from a folder.

    Segmentation when ``mask_dir`` is given (masks matched by file name, see
    :func:`find_image_mask_pairs`), classification from class sub-folders of ``image_dir``
    otherwise. With a grouping (``group_regex`` on the file names, or ``group_csv`` +
    ``group_column``) the split is :func:`grouped_split` and every record keeps its ``group``;
    without one it is random (classification: stratified by class).

    Args:
        image_dir: the images (segmentation) or the class sub-folders (classification).
        output_file: the JSON file to write.
        mask_dir: the masks (segmentation).
        mask_suffix: mask stem = image stem + this.
        class_names: classification classes in label order (default: sorted sub-folder names).
        group_regex: regex giving the group from a file name.
        group_csv: CSV table with the group of each image.
        group_column: the CSV column with the group.
        csv_image_column: the CSV column naming the image (default: the first column).
        val_fraction: fraction of the items (groups' items) for validation.
        test_fraction: fraction for test.
        seed: seed of the split.
        base_dir: write paths relative to this folder, to be given as the bundle's ``dataset_dir``
            (default: relative to the JSON file's folder).
        absolute_paths: write absolute paths instead.
        extensions: accepted image file endings.
        max_items: keep about this many items, for quick trials: whole groups (or single items without a
            grouping) drawn with ``seed`` until the count is reached; ``None``: all.

    Returns:
        a summary: the output file, the task, the class names, :func:`split_summary`.

    Raises:
        ValueError: for invalid arguments or groupings; FileNotFoundError for missing folders/files.
    """
    if group_regex and group_csv:
        raise ValueError("give either group_regex or group_csv (+ group_column), not both.")
    if group_csv and not group_column:
        raise ValueError("group_csv needs group_column (the column holding the patient / video id).")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction}, {test_fraction}.")
    if mask_dir is not None:
        task, records, names = "segmentation", find_image_mask_pairs(image_dir, mask_dir, mask_suffix, extensions), None
    else:
        records, names = find_class_folder_images(image_dir, class_names, extensions)
        task = "classification"
    grouped = bool(group_regex or group_csv)
    if group_regex:
        groups_from_regex(records, group_regex)
    elif group_csv:
        groups_from_csv(records, group_csv, str(group_column), csv_image_column)
    if max_items is not None:
        records = _subset(records, int(max_items), "group" if grouped else None, seed)
    fractions = {"training": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    if grouped:
        parts = grouped_split(records, "group", fractions, seed)
    elif task == "classification":
        parts = stratified_split(records, "label", fractions, seed)
    else:
        parts = grouped_split([dict(r, group=r["image"]) for r in records], "group", fractions, seed)
        parts = {k: [{kk: vv for kk, vv in r.items() if kk != "group"} for r in v] for k, v in parts.items()}
    out = Path(output_file)
    base = None if absolute_paths else (Path(base_dir) if base_dir is not None else out.absolute().parent)
    for recs in parts.values():
        for r in recs:
            r["image"] = _relative(r["image"], base)
            if task == "segmentation":
                r["label"] = _relative(r["label"], base)
    summary = split_summary(parts, "group" if grouped else None, "label" if task == "classification" else None)
    if summary["leaked_groups"]:  # cannot happen with grouped_split; kept as a guard on the written file
        raise RuntimeError(f"groups in more than one split: {summary['leaked_groups'][:10]}")
    doc: dict[str, Any] = {
        "name": Path(image_dir).name,
        "description": (f"{task} datalist written by tools/make_datalist.py from {Path(image_dir).resolve()}; "
                        + (f"grouped split ({'regex ' + repr(group_regex) if group_regex else 'column ' + repr(group_column) + ' of ' + str(group_csv)}), seed {seed}"
                           if grouped else f"random split{' (stratified by class)' if task == 'classification' else ''}, seed {seed}")),
        "task": task,
    }
    if names is not None:
        doc["class_names"] = list(names)
    doc.update(parts)
    write_datalist(doc, out)
    return {"output_file": str(out.resolve()), "task": task, "class_names": names, "grouped": grouped,
            "base_dir": None if base is None else str(base.resolve()), **summary}
