"""Download a packaged bundle, verify its SHA-256 and install it as ``<bundle_dir>/<name>/``.

Usage:
    python tools/download_bundle.py --name busi_ultrasound_classification --version 0.1.0 \
        --url https://github.com/<owner>/<repo>/releases/download/<tag>/busi_ultrasound_classification_v0.1.0.zip \
        --sha256 <digest> --bundle_dir ./bundles [--overwrite]
    python tools/download_bundle.py --name ... --version ... --model_info dist/model_info.json --bundle_dir ./bundles

``python -m monai.bundle download --url ...`` (MONAI 1.6) checks no digest (it passes
``hash_val=None``), ignores ``--version`` (nothing compares it with the bundle's metadata), reuses
an existing ``<bundle_dir>/<name>.zip`` without checking it, and skips extraction (one INFO log
line) when ``<bundle_dir>/<name>/`` is non-empty, so an old copy stays in place. This tool
instead requires a digest (``--sha256``, or the ``checksum`` of the ``<name>_v<version>`` entry of
a trusted local ``model_info.json`` written by ``tools/package_bundle.py``), downloads through a
temporary file that is deleted on a mismatch, refuses archives with absolute paths, ``..``, links,
or anything outside one top-level folder ``<name>/``, checks that the bundle's
``configs/metadata.json`` is valid and has the requested version, and installs atomically: an
existing ``<bundle_dir>/<name>/`` is refused unless ``--overwrite`` is given. A failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import fire

from drd_components.bundle import validate_metadata
from drd_components.io import UnsafeArchiveError, check_zip_members, download_file, safe_extract_zip

__all__ = ["install_bundle", "resolve_model_info"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_model_info(model_info: str | os.PathLike, name: str, version: str) -> tuple[str, str]:
    """Digest and source URL of ``<name>_v<version>`` in a local ``model_info.json``.

    A ``source`` without a URL scheme is a file name relative to the ``model_info.json`` folder.

    Args:
        model_info: path of the file (local: the digest must come from a trusted copy).
        name: bundle name.
        version: bundle version.

    Returns:
        ``(sha256, url)``.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: naming the file and key when the entry, its ``checksum`` or its ``hash_type`` is unusable.
    """
    path = Path(model_info)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model_info file not found.")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    key = f"{name}_v{version}"
    entry = info.get(key) if isinstance(info, dict) else None
    if not isinstance(entry, dict):
        available = sorted(info) if isinstance(info, dict) else []
        raise ValueError(f"{path}: no entry '{key}'; available: {available}.")
    if entry.get("hash_type", "sha256") != "sha256":
        raise ValueError(f"{path}: '{key}/hash_type' is {entry.get('hash_type')!r}; only sha256 is supported.")
    checksum = str(entry.get("checksum", "")).lower()
    if not _SHA256.match(checksum):
        raise ValueError(f"{path}: '{key}/checksum' must be a 64-character sha256 hex digest, got {checksum!r}.")
    source = str(entry.get("source", ""))
    if not source:
        raise ValueError(f"{path}: '{key}/source' is empty.")
    if not urlparse(source).scheme:
        source = (path.parent / source).resolve().as_uri()
    return checksum, source


def _check_layout(zip_path: Path, name: str) -> None:
    """Refuse unsafe members and anything not under the single top-level folder ``<name>/``."""
    with zipfile.ZipFile(zip_path) as zf:
        members = check_zip_members(zf, str(zip_path))
        tops = {m.filename.replace("\\", "/").split("/", 1)[0] for m in members}
        if tops != {name}:
            raise UnsafeArchiveError(
                f"{zip_path}: expected exactly one top-level folder '{name}/', found {sorted(tops)}."
            )
        if not any(m.filename.replace("\\", "/").startswith(f"{name}/") for m in members):
            raise UnsafeArchiveError(f"{zip_path}: '{name}' is not a folder.")


def install_bundle(
    name: str,
    version: str,
    bundle_dir: str,
    url: str | None = None,
    sha256: str | None = None,
    model_info: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Download, verify and install a bundle zip as ``<bundle_dir>/<name>/``.

    Args:
        name: bundle name (the zip's top-level folder).
        version: expected ``version`` of the bundle's ``configs/metadata.json``.
        bundle_dir: folder to install into (created).
        url: the zip's address (``https://`` or ``file://``); default: ``source`` from ``model_info``.
        sha256: expected digest of the zip.
        model_info: a trusted local ``model_info.json`` giving the digest (and the URL).
        overwrite: replace an existing ``<bundle_dir>/<name>/``.
        progress: show a progress bar.

    Returns:
        the installed folder.

    Raises:
        ValueError: for a bad name, version or digest, no digest at all, or a digest that
            disagrees with ``model_info``; for a downloaded bundle whose metadata is invalid or
            has another version.
        FileExistsError: when the bundle is installed already and ``overwrite`` is not set.
        drd_components.io.DownloadError: on a transfer failure or checksum mismatch.
        drd_components.io.UnsafeArchiveError: for an unsafe or wrongly laid out archive.
    """
    name, version = str(name), str(version)
    if not _NAME.match(name):
        raise ValueError(f"name '{name}' must match {_NAME.pattern}.")
    if not _VERSION.match(version):
        raise ValueError(f"version '{version}' must look like 1.2.3.")
    expected = str(sha256).strip().lower() if sha256 else None
    if model_info:
        info_sha, info_url = resolve_model_info(model_info, name, version)
        if expected and expected != info_sha:
            raise ValueError(f"--sha256 {expected} disagrees with {model_info} ({info_sha}).")
        expected, url = info_sha, url or info_url
    if not expected:
        raise ValueError("a checksum is required: pass --sha256 <digest> or --model_info <model_info.json>.")
    if not _SHA256.match(expected):
        raise ValueError(f"sha256 must be 64 hex characters, got '{expected}'.")
    if not url:
        raise ValueError("no URL: pass --url, or --model_info with a 'source' for this bundle.")

    root = Path(bundle_dir)
    created = not root.exists()
    target = root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it.")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}_v{version}.", dir=root))
    try:
        archive = download_file(url, staging / f"{name}_v{version}.zip", sha256=expected, progress=progress)
        _check_layout(archive, name)
        safe_extract_zip(archive, staging / "extracted")
        new = staging / "extracted" / name
        meta_file = new / "configs" / "metadata.json"
        if not meta_file.is_file():
            raise ValueError(f"{url}: the bundle has no {name}/configs/metadata.json.")
        meta = validate_metadata(meta_file)
        if meta["version"] != version:
            raise ValueError(f"{url}: {name}/configs/metadata.json has version {meta['version']}, expected {version}.")
        if target.exists():  # overwrite: swap, then delete the old copy with the staging folder
            os.replace(target, staging / "previous")
        os.replace(new, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return str(target)


if __name__ == "__main__":
    fire.Fire(install_bundle)
