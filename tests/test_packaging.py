"""Bundle packaging (tools/package_bundle.py) and verified download (tools/download_bundle.py)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from drd_components.data.synthetic import write_synthetic_busi
from drd_components.io import DownloadError, UnsafeArchiveError
from tests.bundle_utils import BUNDLES, REPO_ROOT, write_standin_teacher
from tools.download_bundle import install_bundle, resolve_model_info
from tools.package_bundle import ZIP_DATE_TIME, build, build_all, bundle_files, release_url, zip_name

BUNDLE_NAMES = sorted(p.name for p in BUNDLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
TRAINED = "busi_ultrasound_classification"
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_bundle(name: str, dest_root: Path) -> Path:
    """Copy a bundle without the contents of models/ (which may hold large local teacher files)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return names if Path(folder).name == "models" and Path(folder).parent.name == name else []

    return Path(shutil.copytree(BUNDLES / name, dest_root / name, ignore=ignore))


def _version(name: str) -> str:
    return json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())["version"]


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_build_is_deterministic_clean_and_recorded(name, tmp_path):
    first = Path(build(name, output_dir=str(tmp_path / "a")))
    assert first.name == zip_name(name, _version(name))

    # the same contents with other mtimes, permissions and junk around them give the same bytes
    src = _copy_bundle(name, tmp_path / "src")
    for i, path in enumerate(sorted(p for p in src.rglob("*") if p.is_file())):
        os.utime(path, (1_000_000_000 + i, 1_000_000_000 + i))
        path.chmod(0o600 if i % 2 else 0o755)
    for junk in ("__pycache__/x.cpython-311.pyc", "configs/.hidden.json", ".git/config", "configs/x.pyc",
                 "models/teacher/big.pth", "models/model.pt", "models/resume_checkpoint_epoch=1.pt",
                 "eval/predictions.csv"):
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_bytes(b"junk")
    second = Path(build(name, output_dir=str(tmp_path / "b"), bundles_dir=str(src.parent)))
    assert first.read_bytes() == second.read_bytes()

    with zipfile.ZipFile(first) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert {n.split("/", 1)[0] for n in names} == {name}
        assert names == sorted(names, key=lambda n: n.rstrip("/").split("/"))
        assert f"{name}/models/" in names and f"{name}/configs/metadata.json" in names
        assert not [n for n in names if n.startswith(f"{name}/models/") and not n.endswith("/")]
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/." in n]
        for info in infos:
            assert info.date_time == ZIP_DATE_TIME
            assert (info.external_attr >> 16) & 0o777 == (0o755 if info.is_dir() else 0o644)
        contents = {i.filename: zf.read(i) for i in infos if not i.is_dir()}

    entry = json.loads((tmp_path / "a" / "model_info.json").read_text())[first.stem]
    assert entry["checksum"] == _sha256(first.read_bytes()) and entry["size"] == first.stat().st_size
    assert entry["hash_type"] == "sha256" and entry["version"] == _version(name) and entry["source"] == first.name
    assert {f["path"]: f["sha256"] for f in entry["files"]} == {k: _sha256(v) for k, v in contents.items()}


def test_build_all_records_every_bundle_and_release_urls(tmp_path):
    paths = build_all(output_dir=str(tmp_path), repo="someone/drd/bundles-v1")
    assert [Path(p).name for p in paths] == [zip_name(n, _version(n)) for n in BUNDLE_NAMES]
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert sorted(info) == sorted(Path(p).stem for p in paths)
    from monai.bundle.scripts import _get_git_release_url  # the URL MONAI's --source github downloads

    for key, entry in info.items():
        assert entry["source"] == _get_git_release_url("someone", "drd", "bundles-v1", f"{key}.zip")
    # a stale entry (its zip gone) is dropped on the next build, other bundles are kept
    Path(paths[0]).unlink()
    build(BUNDLE_NAMES[-1], output_dir=str(tmp_path))
    assert sorted(json.loads((tmp_path / "model_info.json").read_text())) == sorted(Path(p).stem for p in paths[1:])
    with pytest.raises(ValueError, match="owner"):
        release_url("no-tag/here", "x.zip")


def test_weights_only_on_request_and_never_declared_large_files(tmp_path):
    src = _copy_bundle(TRAINED, tmp_path / "src")
    (src / "models" / "teacher").mkdir(parents=True)
    (src / "models" / "teacher" / "standin.pt").write_bytes(b"teacher")
    assert not [f for f in bundle_files(src) if f.startswith("models/")]
    with pytest.raises(FileNotFoundError, match="model.pt"):
        bundle_files(src, include_weights=True)
    (src / "models" / "model.pt").write_bytes(b"student")
    assert [f for f in bundle_files(src, include_weights=True) if f.startswith("models/")] == ["models/model.pt"]
    zpath = build(TRAINED, output_dir=str(tmp_path / "dist"), bundles_dir=str(src.parent), include_weights=True)
    with zipfile.ZipFile(zpath) as zf:
        assert zf.read(f"{TRAINED}/models/model.pt") == b"student"
        assert f"{TRAINED}/models/teacher/standin.pt" not in zf.namelist()
    assert json.loads((tmp_path / "dist" / "model_info.json").read_text())[Path(zpath).stem]["includes_weights"]
    with open(src / "large_files.yml", "a") as f:
        f.write('  - path: "models/model.pt"\n    url: "https://example.org/model.pt"\n    hash_val: ""\n')
    with pytest.raises(ValueError, match="large_files.yml"):
        bundle_files(src, include_weights=True)


def test_refuses_links_special_entries_and_bad_metadata(tmp_path):
    src = _copy_bundle(TRAINED, tmp_path / "src")
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the bundle")
    (src / "docs" / "link.txt").symlink_to(outside)
    with pytest.raises(ValueError, match="link.txt' is a symbolic link"):
        bundle_files(src)
    (src / "docs" / "link.txt").unlink()
    (src / "configs" / "more").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match="configs/more' is a symbolic link"):
        bundle_files(src)
    (src / "configs" / "more").unlink()
    (src / "outputs").mkdir()
    with pytest.raises(ValueError, match="unexpected top-level entry 'outputs'"):
        bundle_files(src)
    (src / "outputs").rmdir()
    (tmp_path / "linked").symlink_to(src, target_is_directory=True)
    with pytest.raises(ValueError, match="is a symbolic link"):
        bundle_files(tmp_path / "linked")

    meta_file = src / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["network_data_format"]["outputs"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata.json: invalid metadata at 'network_data_format'.*outputs"):
        build(TRAINED, output_dir=str(tmp_path / "dist"), bundles_dir=str(src.parent))
    meta_file.write_text("{not json")
    with pytest.raises(ValueError, match="metadata.json: not valid JSON"):
        build(TRAINED, output_dir=str(tmp_path / "dist"), bundles_dir=str(src.parent))
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The classification bundle packaged into a 'release' folder."""
    dist = tmp_path_factory.mktemp("dist")
    path = Path(build(TRAINED, output_dir=str(dist)))
    return {"zip": path, "model_info": dist / "model_info.json", "sha256": _sha256(path.read_bytes()),
            "version": _version(TRAINED)}


def _tree_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha256(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def _expected_digests(released) -> dict[str, str]:
    entry = json.loads(released["model_info"].read_text())[released["zip"].stem]
    return {f["path"].split("/", 1)[1]: f["sha256"] for f in entry["files"]}


def test_wrong_checksum_or_unsafe_zip_leaves_nothing(released, tmp_path):
    target = tmp_path / "installed"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        install_bundle(TRAINED, released["version"], str(target), url=released["zip"].as_uri(), sha256="0" * 64,
                       progress=False)
    assert not target.exists()
    with pytest.raises(ValueError, match="checksum is required"):
        install_bundle(TRAINED, released["version"], str(target), url=released["zip"].as_uri(), progress=False)
    with pytest.raises(ValueError, match="no entry 'busi_ultrasound_classification_v9.9.9'"):
        resolve_model_info(released["model_info"], TRAINED, "9.9.9")

    for members in ([f"{TRAINED}/configs/metadata.json", "../evil.txt"],
                    [f"{TRAINED}/configs/metadata.json", "other/LICENSE"]):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            for m in members:
                zf.writestr(m, "{}")
        with pytest.raises(UnsafeArchiveError):
            install_bundle(TRAINED, released["version"], str(target), url=bad.as_uri(),
                           sha256=_sha256(bad.read_bytes()), progress=False)
        assert not target.exists()

    # an installed copy is never replaced silently
    (target / TRAINED).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--overwrite"):
        install_bundle(TRAINED, released["version"], str(target), model_info=str(released["model_info"]))
    installed = install_bundle(TRAINED, released["version"], str(target), model_info=str(released["model_info"]),
                               overwrite=True, progress=False)
    assert _tree_digests(Path(installed)) == _expected_digests(released)
    assert sorted(p.name for p in target.iterdir()) == [TRAINED]  # no staging folder left


def _run(root: Path, configs: list[str], overrides: dict, run_id: str | None = None) -> str:
    files = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", files, "--bundle_root", str(root), "--meta_file", "configs/metadata.json"]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_downloaded_bundle_trains_and_infers(released, tmp_path):
    url = released["zip"].as_uri()
    # MONAI's own downloader (no checksum) ...
    monai_dir = tmp_path / "monai"
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", TRAINED, "--version", released["version"],
           "--url", url, "--bundle_dir", str(monai_dir), "--progress", "False"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _expected_digests(released)
    assert _tree_digests(monai_dir / TRAINED) == expected
    # ... and ours, from the command line, with the digest from model_info.json
    ours = tmp_path / "ours"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "download_bundle.py"), "--name", TRAINED, "--version",
           released["version"], "--url", url, "--model_info", str(released["model_info"]), "--bundle_dir", str(ours),
           "--progress", "False"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(ENV, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = ours / TRAINED
    assert _tree_digests(root) == expected

    # one DRD iteration of the installed copy: stand-in teacher at the overlay's default path
    data = write_synthetic_busi(tmp_path / "busi", n_per_class=4, size=32, seed=0)
    write_standin_teacher(root / "models" / "teacher" / "standin_resnet.pt", block_inplanes=(32, 64, 128, 256))
    common = {"dataset_dir": str(data), "image_size": [32, 32], "num_workers": 0}
    log = _run(root, ["train.json", "teacher_standin.json"],
               dict(common, num_epochs=1, batch_size=6, val_fraction=0.25, test_fraction=0.25), run_id="training")
    assert "loss_cka" in log and "val_accuracy" in log
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("fc.") for k in state)

    # inference with the MONAI-downloaded copy and the student trained above
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data / "malignant").glob("malignant (?).png")):
        shutil.copy(path, images / path.name)
    out = tmp_path / "pred"
    _run(monai_dir / TRAINED, ["inference.json"],
         dict(common, dataset_dir=str(images), output_dir=str(out), ckpt_path=str(root / "models/model.pt")))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 4 and all(r["predicted_class"] in ("benign", "malignant", "normal") for r in rows)
