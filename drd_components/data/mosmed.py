"""MosMedData: chest CT scans with COVID-19 related findings (Morozov et al. 2020), ``COVID19_1110``.

Official layout (archive ``COVID19_1110``, https://mosmed.ai/datasets/covid19_1110)::

    COVID19_1110/
        studies/CT-0/study_0001.nii.gz ... (254 studies, no findings)
        studies/CT-1/ ... (684, < 25 % lung involvement)
        studies/CT-2/ ... (125, 25-50 %)
        studies/CT-3/ ... (45, 50-75 %)
        studies/CT-4/ ... (2, > 75 %)
        masks/study_0255_mask.nii.gz ... (50 annotated CT-1 studies; not used here)
        dataprep.json

The severity category is the class: label ``k`` for ``CT-k`` (0-4). There is no official split: the
datalist is a seeded split stratified by class (:func:`drd_components.data.splits.stratified_split`),
so every part keeps each class's share (cut by rounding per class; a class too small for a part,
like CT-4 with 2 studies, may be absent from validation or test).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from drd_components.data.datalist_io import write_datalist
from drd_components.data.splits import stratified_split

__all__ = ["MOSMED_CLASSES", "find_mosmeddata_studies", "find_mosmeddata_cases", "mosmeddata_datalist"]

#: severity categories in label order (label ``k`` is ``CT-k``).
MOSMED_CLASSES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
_STUDY_RE = re.compile(r"^study_\d+\.nii(\.gz)?$")
_LAYOUT = "studies/CT-0 .. studies/CT-4 folders holding study_XXXX.nii.gz files (MosMedData COVID19_1110)"


def find_mosmeddata_studies(dataset_dir: str | os.PathLike) -> Path:
    """Find the ``studies`` folder (the one holding ``CT-0`` .. ``CT-4``) in or under ``dataset_dir``.

    ``dataset_dir`` may be ``COVID19_1110``, its ``studies`` folder, or any parent of them.

    Raises:
        FileNotFoundError: when the folder does not exist or has no such sub-folder.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir '{root}' does not exist: expected a folder with {_LAYOUT}.")
    for candidate in (root, root / "studies"):
        if (candidate / MOSMED_CLASSES[0]).is_dir():
            return candidate.resolve()
    found = sorted(p.parent for p in root.rglob(MOSMED_CLASSES[0]) if p.is_dir())
    if not found:
        raise FileNotFoundError(f"no 'CT-0' folder found in or under dataset_dir '{root}': expected {_LAYOUT}.")
    return found[0].resolve()


def find_mosmeddata_cases(dataset_dir: str | os.PathLike) -> list[dict]:
    """List every study as ``{"image", "label", "class_name"}`` (absolute paths, sorted by path).

    Files that are not ``study_XXXX.nii[.gz]`` (and macOS ``._*`` files) are ignored.

    Raises:
        FileNotFoundError: when a ``CT-k`` folder is missing or no study is found.
    """
    studies = find_mosmeddata_studies(dataset_dir)
    missing = [c for c in MOSMED_CLASSES if not (studies / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"'{studies}' lacks the class folders {missing}: expected {_LAYOUT}.")
    cases = []
    for label, name in enumerate(MOSMED_CLASSES):
        for path in sorted((studies / name).iterdir()):
            if path.is_file() and _STUDY_RE.match(path.name):
                cases.append({"image": str(path.resolve()), "label": label, "class_name": name})
    if not cases:
        raise FileNotFoundError(f"no study_XXXX.nii.gz files in the class folders of '{studies}': expected {_LAYOUT}.")
    return cases


def mosmeddata_datalist(
    dataset_dir: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Seeded, class-stratified train/validation/test split of MosMedData ``COVID19_1110``.

    Args:
        dataset_dir: ``COVID19_1110``, its ``studies`` folder, or a parent of them.
        output_file: optional JSON file to write the datalist to (atomically).
        val_fraction: share of each class for validation.
        test_fraction: share of each class for testing.
        seed: split seed.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": path, "label": 0-4, "class_name": "CT-k"}``.

    Raises:
        FileNotFoundError: see :func:`find_mosmeddata_cases`.
        ValueError: for fractions outside ``[0, 1]`` or summing above 1.
    """
    fractions = {"training": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    if any(f < 0 or f > 1 for f in fractions.values()):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1] with a sum <= 1, got {fractions}.")
    parts = stratified_split(find_mosmeddata_cases(dataset_dir), "label", fractions, seed)
    if output_file is not None:
        write_datalist(parts, output_file)
    return parts
