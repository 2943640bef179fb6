"""Safe extraction of zip archives (no absolute paths, no '..', no links)."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["UnsafeArchiveError", "check_zip_members", "safe_extract_zip"]


class UnsafeArchiveError(ValueError):
    """Raised for an archive member that could write outside the target folder."""


def check_zip_members(archive: zipfile.ZipFile, source: str = "archive") -> list[zipfile.ZipInfo]:
    """Return the members of ``archive`` after checking that none can escape the target folder.

    Args:
        archive: an open zip file.
        source: name used in error messages.

    Returns:
        the members.

    Raises:
        UnsafeArchiveError: for absolute paths, drive letters, ``..`` components or symbolic links.
    """
    members = archive.infolist()
    for info in members:
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"{source}: member '{name}' has an absolute path.")
        if ".." in path.parts:
            raise UnsafeArchiveError(f"{source}: member '{name}' contains '..'.")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{source}: member '{name}' is a symbolic link.")
    return members


def safe_extract_zip(path: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract a zip file into ``target_dir`` after :func:`check_zip_members`.

    Args:
        path: the zip file.
        target_dir: folder to extract into (created).

    Returns:
        the extracted file paths.

    Raises:
        UnsafeArchiveError: see :func:`check_zip_members`.
    """
    target = Path(target_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as zf:
        members = check_zip_members(zf, str(path))
        out = []
        for info in members:
            dest = (target / info.filename).resolve()
            if target not in dest.parents and dest != target:
                raise UnsafeArchiveError(f"{path}: member '{info.filename}' resolves outside {target}.")
            zf.extract(info, target)
            out.append(dest)
    return out
