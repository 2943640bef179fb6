"""Download and prepare datasets for the DRD bundles.

Usage:
    python tools/prepare_data.py busi --output_dir /data/busi [--sha256 <digest>]
    python tools/prepare_data.py busi_local --dataset_dir /data/Dataset_BUSI_with_GT --output_dir /data/busi_lists

Every download goes through a temporary file and is checked against a SHA-256 digest before it is
kept; archives are extracted only after checking that no member escapes the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from drd_components.data.busi import BUSI_CLASSES, busi_classification_datalist, find_busi_cases
from drd_components.io import download_file, safe_extract_zip

#: the archive linked from the authors' dataset page (Al-Dhabyani et al. 2020).
BUSI_URL = "https://scholar.cu.edu.eg/Dataset_BUSI.zip"


def _find_root(folder: Path) -> Path:
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if all((candidate / c).is_dir() for c in BUSI_CLASSES):
            return candidate
    raise FileNotFoundError(f"no folder with {list(BUSI_CLASSES)} sub-folders under {folder}.")


def _summary(root: Path, datalist_file: Path, seed: int) -> dict:
    cases = find_busi_cases(root)
    parts = busi_classification_datalist(root, datalist_file, seed=seed)
    summary = {
        "dataset_dir": str(root),
        "images": len(cases),
        "per_class": {c: sum(1 for x in cases if x["class_name"] == c) for c in BUSI_CLASSES},
        "images_with_several_masks": sum(1 for x in cases if len(x["masks"]) > 1),
        "split": {k: len(v) for k, v in parts.items()},
        "datalist": str(datalist_file),
    }
    print(json.dumps(summary, indent=2))
    return summary


class PrepareData:
    """Dataset preparation commands."""

    def busi(self, output_dir: str, url: str = BUSI_URL, sha256: str | None = None, seed: int = 0) -> None:
        """Download BUSI from the authors' source, extract it safely and write the split.

        The authors publish no checksum. Without ``--sha256`` the archive's digest is printed and
        saved next to it (``Dataset_BUSI.zip.sha256``); pass it on later runs so that any
        change of the remote file is detected.

        Args:
            output_dir: folder to download and extract into.
            url: archive address.
            sha256: expected SHA-256 of the archive.
            seed: split seed.
        """
        out = Path(output_dir)
        archive = download_file(url, out / "Dataset_BUSI.zip", sha256=sha256)
        if not sha256:
            from drd_components.teachers.checkpoint import sha256sum

            digest = sha256sum(archive)
            (out / "Dataset_BUSI.zip.sha256").write_text(digest + "\n")
            print(f"archive sha256 (no published checksum; recorded): {digest}")
        safe_extract_zip(archive, out / "extracted")
        root = _find_root(out / "extracted")
        _summary(root, out / "busi_datalist.json", seed)
        print(f"\nTrain with: --dataset_dir '{root}'")

    def busi_local(self, dataset_dir: str, output_dir: str, seed: int = 0) -> None:
        """Check a local BUSI copy and write its deterministic stratified split to ``output_dir``."""
        root = _find_root(Path(dataset_dir))
        _summary(root, Path(output_dir) / "busi_datalist.json", seed)


if __name__ == "__main__":
    fire.Fire(PrepareData)
