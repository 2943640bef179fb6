"""Verified downloads and safe archive extraction."""

import hashlib
import os
import stat
import zipfile

import pytest

from drd_components.io import DownloadError, UnsafeArchiveError, download_file, safe_extract_zip


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "weights.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(300_000))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_and_renames(source, tmp_path):
    path, digest = source
    dest = download_file(path.as_uri(), tmp_path / "out" / "w.bin", sha256=digest, progress=False)
    assert dest.read_bytes() == path.read_bytes()
    assert not list((tmp_path / "out").glob("*.part"))


def test_checksum_mismatch_deletes_partial_file(source, tmp_path):
    path, _ = source
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(path.as_uri(), out / "w.bin", sha256="0" * 64, progress=False)
    assert not (out / "w.bin").exists()
    assert not list(out.glob("*"))


def test_existing_good_file_is_kept(source, tmp_path):
    path, digest = source
    dest = tmp_path / "w.bin"
    dest.write_bytes(path.read_bytes())
    mtime = dest.stat().st_mtime_ns
    download_file((tmp_path / "missing").as_uri(), dest, sha256=digest, progress=False)  # no transfer needed
    assert dest.stat().st_mtime_ns == mtime


def test_failed_transfer_leaves_nothing(tmp_path):
    with pytest.raises(DownloadError):
        download_file((tmp_path / "nope.bin").as_uri(), tmp_path / "w.bin", sha256="0" * 64, progress=False)
    assert not list(tmp_path.glob("*"))


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_safe_extract_accepts_normal_archive(tmp_path):
    archive = _zip(tmp_path / "ok.zip", [("bundle/configs/a.json", "{}", None), ("bundle/docs/README.md", "x", None)])
    files = safe_extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bundle" / "configs" / "a.json").read_text() == "{}"
    assert len(files) == 2


@pytest.mark.parametrize(
    "member,mode,message",
    [
        ("/etc/evil", None, "absolute"),
        ("bundle/../../evil", None, r"'\.\.'"),
        ("C:/evil", None, "absolute"),
        ("bundle/link", stat.S_IFLNK | 0o777, "symbolic link"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, member, mode, message):
    archive = _zip(tmp_path / "bad.zip", [("bundle/ok.txt", "ok", None), (member, "x", mode)])
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "bundle" / "ok.txt").exists()  # checked before anything is written
