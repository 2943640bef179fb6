"""Data-quality checks on the real datasets of DRD_DATA_ROOT (default ../shared/data next to the repo).

* Brain Tumor Classification (MRI): the duplicate detector finds every byte-identical group that
  ``duplicates.csv`` lists across Training/Testing, and the datalist keeps no exact or
  near-identical group on two sides.
* RetinaMNIST: the file passes the official MD5 and converts to the official 1080/120/400 split.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from drd_components.data.brain_tumor import brain_tumor_mri_datalist, find_brain_tumor_images
from drd_components.data.duplicates import find_duplicate_groups
from drd_components.data.medmnist import file_md5, medmnist_datalist

DATA_ROOT = Path(os.environ.get("DRD_DATA_ROOT", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
BRAIN = DATA_ROOT / "brain_tumor_mri"
RETINA = DATA_ROOT / "medmnist" / "retinamnist.npz"


def _skip_if_absent(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data not found at '{path}' (set DRD_DATA_ROOT to the folder holding it)")


def _listed_cross_split_groups() -> list[set[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    with open(BRAIN / "duplicates.csv", newline="") as f:
        for row in csv.DictReader(f):
            groups[row["group"]].add(str((BRAIN / row["split"] / row["class"] / row["file"]).resolve()))
    return [g for g in groups.values() if len({Path(p).parents[1].name for p in g}) > 1]


def test_brain_tumor_exact_leaks_found():
    _skip_if_absent(BRAIN / "duplicates.csv")
    official = find_brain_tumor_images(BRAIN)
    files = [r["image"] for s in official.values() for r in s]
    assert len(files) == 3264
    listed = _listed_cross_split_groups()
    assert len(listed) == 64
    groups = find_duplicate_groups(files, near=False)
    group_of = {f: set(g.files) for g in groups for f in g.files}
    for g in listed:
        first = next(iter(g))
        assert first in group_of and g <= group_of[first], f"listed leak {sorted(g)} not found as one exact group"


def test_brain_tumor_datalist_has_no_cross_split_duplicates(tmp_path):
    _skip_if_absent(BRAIN)
    start = time.perf_counter()
    parts = brain_tumor_mri_datalist(BRAIN, tmp_path / "datalist.json")
    elapsed = time.perf_counter() - start
    report = json.loads((tmp_path / "datalist_duplicates.json").read_text())
    split_of = {r["image"]: s for s, rs in parts.items() for r in rs}
    assert len(split_of) == 3264
    for g in _listed_cross_split_groups():
        assert {split_of[f] for f in g} == {"test"}
    regroups = find_duplicate_groups(list(split_of))
    spanning = [g.files for g in regroups if len({split_of[f] for f in g.files}) > 1]
    assert not spanning, f"{len(spanning)} duplicate groups still span splits, e.g. {spanning[:2]}"
    counts = report["counts"]
    assert counts["cross_split_exact_groups"] >= 64 and counts["moved_records"] >= 64
    print(f"brain tumour duplicates: {json.dumps(counts)}; datalist in {elapsed:.1f} s; "
          f"splits {({s: len(v) for s, v in parts.items()})}")
    assert elapsed < 60


def test_retinamnist_official_md5_and_counts(tmp_path):
    _skip_if_absent(RETINA)
    assert file_md5(RETINA) == "bd4c0672f1bba3e3a89f0e4e876791e4"
    parts = medmnist_datalist(RETINA.parent, tmp_path / "datalist.json", flag="retinamnist")
    assert [len(parts[s]) for s in ("training", "validation", "test")] == [1080, 120, 400]
    assert Counter(r["label"] for r in parts["training"]) == {0: 486, 1: 128, 2: 206, 3: 194, 4: 66}
    assert Counter(r["label"] for r in parts["test"]) == {0: 174, 1: 46, 2: 92, 3: 68, 4: 20}
    assert all(Path(r["image"]).is_file() for s in parts.values() for r in s)
    assert not any(Path(RETINA.parent).glob("retinamnist_images"))  # nothing written into the data folder
