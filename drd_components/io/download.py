"""Checksum-verified, atomic file downloads (SHA-256, or MD5 where a source publishes only that)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

__all__ = ["DownloadError", "download_file"]

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """Raised when a download fails or its checksum does not match."""


def download_file(
    url: str,
    destination: str | os.PathLike,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    md5: str | None = None,
) -> Path:
    """Download ``url`` to ``destination`` with a progress bar and a SHA-256 (or MD5) check.

    The data goes to a temporary file next to ``destination`` and is renamed into place only
    after the checksum matched, so a failed or interrupted download never leaves a partial file
    under the final name; on a mismatch the temporary file is deleted. An existing destination
    whose checksum matches is kept and not downloaded again. ``file://`` URLs work too.

    Args:
        url: source address.
        destination: file to create.
        sha256: expected hex digest. ``None`` (and no ``md5``) downloads without a check and logs
            the digest (only for sources that publish no checksum; record it and pass it next time).
        progress: show a tqdm progress bar.
        timeout: network timeout in seconds.
        chunk_size: bytes per read.
        md5: expected MD5 hex digest, for sources whose only published checksum is MD5 (e.g. the
            Medical Segmentation Decathlon archives as listed by ``monai.apps.DecathlonDataset``).
            Checked in addition to ``sha256`` when both are given.

    Returns:
        the destination path.

    Raises:
        DownloadError: when the transfer fails or a digest differs from ``sha256`` / ``md5``.
    """
    dest = Path(destination)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = {name: value.strip().lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if dest.exists() and expected:
        digests = {name: hashlib.new(name) for name in expected}
        with open(dest, "rb") as f:
            for block in iter(lambda: f.read(chunk_size), b""):
                for d in digests.values():
                    d.update(block)
        if all(digests[name].hexdigest() == value for name, value in expected.items()):
            logger.info("%s exists with the expected checksum; not downloading again.", dest)
            return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digests = {name: hashlib.new(name) for name in ("sha256", *(["md5"] if md5 else []))}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
            while True:
                block = response.read(chunk_size)
                if not block:
                    break
                out.write(block)
                for d in digests.values():
                    d.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"downloading {url} to {dest} failed: {e}") from e
    for name, value in expected.items():
        actual = digests[name].hexdigest()
        if actual != value:
            tmp.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {url}: expected {name} {value}, got {actual}; the partial file was deleted."
            )
    if not expected:
        logger.warning(
            "no checksum given for %s; downloaded file has sha256 %s (record it).", url, digests["sha256"].hexdigest()
        )
    shutil.move(str(tmp), dest)
    return dest
