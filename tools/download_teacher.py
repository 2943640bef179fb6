"""Download a bundle's large files (its teacher weights) from the official location.

Usage:
    python tools/download_teacher.py --bundle_dir bundles/busi_ultrasound_classification [--sha256 <digest>]

Reads ``large_files.yml``; each file is downloaded with a progress bar into the bundle folder
through a temporary file and verified against ``hash_val`` (or ``--sha256``) before it is kept.
Gated files (e.g. RadImageNet) have no public URL: put your copy in place and pass its digest to
the bundle as ``--teacher_sha256``.
"""

from __future__ import annotations

from pathlib import Path

import fire
import yaml

from drd_components.io import download_file


def main(bundle_dir: str, sha256: str | None = None, only: str | None = None) -> None:
    """Download every entry of ``<bundle_dir>/large_files.yml``.

    Args:
        bundle_dir: the bundle folder.
        sha256: digest to require when the yml has none (single-file bundles).
        only: download only the entry whose path contains this text.

    Raises:
        ValueError: for an entry whose path leaves the bundle folder or has no URL.
    """
    root = Path(bundle_dir).resolve()
    spec = yaml.safe_load((root / "large_files.yml").read_text()) or {}
    for entry in spec.get("large_files", []):
        rel = entry["path"]
        if only and only not in rel:
            continue
        dest = (root / rel).resolve()
        if root not in dest.parents:
            raise ValueError(f"large_files.yml entry '{rel}' points outside {root}.")
        url = entry.get("url")
        if not url:
            raise ValueError(f"large_files.yml entry '{rel}' has no url (gated download: obtain it yourself).")
        expected = entry.get("hash_val") or sha256
        if entry.get("hash_type", "sha256") not in ("sha256", "") and entry.get("hash_val"):
            raise ValueError(f"only sha256 hashes are supported, got {entry['hash_type']} for '{rel}'.")
        download_file(url, dest, sha256=expected)
        print(f"{rel}: ok")


if __name__ == "__main__":
    fire.Fire(main)
