"""Safe extraction of zip and tar archives (no absolute paths, no '..', no links, no devices)."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["UnsafeArchiveError", "check_zip_members", "safe_extract_zip", "check_tar_members", "safe_extract_tar"]


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


def _check_member_name(name: str, source: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{source}: member '{name}' has an absolute path.")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{source}: member '{name}' contains '..'.")


def check_tar_members(archive: tarfile.TarFile, source: str = "archive") -> list[tarfile.TarInfo]:
    """Return the members of ``archive`` after checking that none can escape the target folder.

    Only regular files and folders are accepted.

    Args:
        archive: an open tar file.
        source: name used in error messages.

    Returns:
        the members.

    Raises:
        UnsafeArchiveError: for absolute paths, drive letters, ``..`` components, symbolic or hard
            links, device files and FIFOs.
    """
    members = archive.getmembers()
    for info in members:
        _check_member_name(info.name, source)
        if info.issym() or info.islnk():
            raise UnsafeArchiveError(f"{source}: member '{info.name}' is a link (to '{info.linkname}').")
        if not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"{source}: member '{info.name}' is a device, FIFO or other special file.")
    return members


def safe_extract_tar(path: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract a tar file (plain, gzip, bzip2 or xz) into ``target_dir`` after :func:`check_tar_members`.

    The members are extracted into a temporary folder inside ``target_dir`` and then moved into
    place, so an interrupted extraction leaves no half-written tree under the final names. Existing
    files with the same names are replaced; permission bits are limited to the owner's
    read/write(/execute) and the group/other read bits, never set-uid/set-gid.

    Args:
        path: the tar file.
        target_dir: folder to extract into (created).

    Returns:
        the extracted file paths (folders are not listed).

    Raises:
        UnsafeArchiveError: see :func:`check_tar_members`; also for a member resolving outside
            ``target_dir``.
    """
    target = Path(target_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
    try:
        with tarfile.open(path) as tf:
            members = check_tar_members(tf, str(path))
            for info in members:
                dest = (staging / info.name).resolve()
                if staging not in dest.parents and dest != staging:
                    raise UnsafeArchiveError(f"{path}: member '{info.name}' resolves outside {target}.")
            for info in members:
                dest = staging / info.name
                if info.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tf.extractfile(info)
                if source is None:
                    raise UnsafeArchiveError(f"{path}: member '{info.name}' has no readable data.")
                with source, open(dest, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.chmod(dest, (info.mode & 0o755) | 0o600)
        out_files = []
        for item in sorted(staging.iterdir()):
            final = target / item.name
            if final.is_dir() and item.is_dir():
                _merge_tree(item, final)
            else:
                if final.is_dir():
                    shutil.rmtree(final)
                os.replace(item, final)
        for info in members:
            if info.isfile():
                out_files.append(target / info.name)
        return out_files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_tree(source: Path, destination: Path) -> None:
    """Move the content of ``source`` into the existing folder ``destination``, replacing files."""
    for item in source.iterdir():
        final = destination / item.name
        if item.is_dir() and final.is_dir():
            _merge_tree(item, final)
        else:
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(item, final)
