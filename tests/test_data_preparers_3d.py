"""3D dataset preparation: MSD, MosMedData, BTCV datalists, fake layouts, safe tar extraction, MD5 downloads."""

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LabelFilterd, LoadImaged, MapLabelValued, Orientationd, Spacingd

from drd_components.data.btcv import SelectLabeld, btcv_gallbladder_datalist
from drd_components.data.mosmed import MOSMED_CLASSES, mosmeddata_datalist
from drd_components.data.msd import MSD_TASKS, find_msd_task_dir, msd_datalist
from drd_components.io.archive import UnsafeArchiveError, safe_extract_tar
from drd_components.io.download import DownloadError, download_file
from tests.fake_datasets_3d import FAKE_DATASETS_3D, FAKE_SHAPE

REPO = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("prepare_data_3d", REPO / "tools" / "prepare_data_3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake3d")
    return {name: writer(root / name) for name, writer in FAKE_DATASETS_3D.items()}


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


def _check_parts(parts):
    assert set(parts) == {"training", "validation", "test"}
    images = [x["image"] for v in parts.values() for x in v]
    assert len(images) == len(set(images)), "a case is in two parts"
    for part in parts.values():
        assert part, "every part of the fake datasets should be non-empty"
        for item in part:
            for key in ("image", "label"):
                if isinstance(item[key], str):
                    assert Path(item[key]).is_absolute() and Path(item[key]).is_file()


@pytest.mark.parametrize("name", sorted(FAKE_DATASETS_3D))
def test_preparer_writes_deterministic_datalist(name, fakes, tool, tmp_path, capsys):
    out = tmp_path / "out"
    summary = tool.PREPARERS[name](str(out), dataset_dir=str(fakes[name]), seed=3)
    printed = json.loads(capsys.readouterr().out)
    assert printed == summary and summary["datalist"] == str(out / "datalist.json")
    parts = json.loads((out / "datalist.json").read_text())
    _check_parts(parts)
    assert summary["split"] == {k: len(v) for k, v in parts.items()}
    again = tool.PREPARERS[name](str(tmp_path / "again"), dataset_dir=str(fakes[name]), seed=3)
    assert json.loads((tmp_path / "again" / "datalist.json").read_text()) == parts and again["split"] == summary["split"]
    other = tool.PREPARERS[name](str(tmp_path / "other"), dataset_dir=str(fakes[name]), seed=4)
    assert json.loads((tmp_path / "other" / "datalist.json").read_text()) != parts or other["split"] != summary["split"]
    assert not list(out.glob(".*tmp")), "temporary file left behind"


@pytest.mark.parametrize("name", sorted(FAKE_DATASETS_3D))
def test_fake_volumes_survive_monai_spatial_transforms(name, fakes, tool, tmp_path, capsys):
    parts = json.loads(
        Path(tool.PREPARERS[name](str(tmp_path), dataset_dir=str(fakes[name]))["datalist"]).read_text()
    )
    item = parts["training"][0]
    keys = ["image", "label"] if isinstance(item["label"], str) else ["image"]
    pipeline = Compose(
        [
            LoadImaged(keys, image_only=True, ensure_channel_first=True),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=(2.0, 2.0, 2.0), mode=["bilinear", "nearest"][: len(keys)]),
        ]
    )
    out = pipeline(item)
    assert out["image"].ndim == 4 and torch.isfinite(out["image"]).all()
    if "label" in keys:
        assert out["label"].shape[1:] == out["image"].shape[1:]
        assert torch.equal(out["image"].affine, out["label"].affine)
        values = set(torch.unique(out["label"]).tolist())
        assert 0 in values and len(values) > 1


def test_msd_prostate_image_is_two_channels_first(fakes):
    parts = msd_datalist(fakes["msd_prostate"])
    item = parts["training"][0]
    out = LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True)(item)
    assert tuple(out["image"].shape) == (2, *FAKE_SHAPE)
    assert tuple(out["label"].shape) == (1, *FAKE_SHAPE)
    assert set(torch.unique(out["label"]).tolist()) == {0, 1, 2}
    # channel 0 is T2, channel 1 ADC (the fake's ADC mean is far higher)
    assert out["image"][1].mean() > 3 * out["image"][0].mean()


def test_msd_task_dir_search_and_errors(fakes, tmp_path):
    parent = fakes["msd_spleen"].parent
    assert find_msd_task_dir(parent, "Task09_Spleen") == fakes["msd_spleen"].resolve()
    with pytest.raises(FileNotFoundError, match="Task07_Pancreas/dataset.json"):
        find_msd_task_dir(parent, "Task07_Pancreas")


def test_mosmeddata_stratified_split_and_labels(fakes):
    parts = mosmeddata_datalist(fakes["mosmeddata"].parent, val_fraction=0.2, test_fraction=0.2, seed=0)
    for items in parts.values():
        assert {x["label"] for x in items} == set(range(5)), "every class in every part (6 studies per class)"
        for x in items:
            assert x["class_name"] == MOSMED_CLASSES[x["label"]] and Path(x["image"]).parent.name == x["class_name"]
            assert Path(x["image"]).name.startswith("study_")
    assert sum(len(v) for v in parts.values()) == 30  # README.txt in CT-0 ignored


def test_mosmeddata_errors_name_folder_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mosmeddata_datalist(tmp_path / "nope")
    (tmp_path / "studies" / "CT-0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"lacks the class folders \['CT-1'"):
        mosmeddata_datalist(tmp_path)
    for c in MOSMED_CLASSES:
        (tmp_path / "studies" / c).mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="no study_XXXX.nii.gz"):
        mosmeddata_datalist(tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        mosmeddata_datalist(tmp_path, val_fraction=0.7, test_fraction=0.6)


def test_btcv_pairs_training_cases_only(fakes, tmp_path):
    parts = btcv_gallbladder_datalist(fakes["btcv"])
    items = [x for v in parts.values() for x in v]
    assert len(items) == 8  # the Testing image has no label and is not used
    for x in items:
        assert Path(x["image"]).name[3:] == Path(x["label"]).name[5:]
        assert "/Training/" in x["image"]
    assert btcv_gallbladder_datalist(fakes["btcv"] / "RawData" / "Training") == parts
    bad = tmp_path / "RawData" / "Training"
    (bad / "img").mkdir(parents=True)
    (bad / "label").mkdir()
    (bad / "img" / "img0001.nii.gz").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="label0001.nii.gz"):
        btcv_gallbladder_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="'img' and 'label'"):
        btcv_gallbladder_datalist(tmp_path / "RawData" / "Training" / "img")


def test_select_labeld_matches_monai_chain():
    label = MetaTensor(torch.randint(0, 14, (1, 6, 5, 4)).to(torch.uint8), affine=torch.diag(torch.tensor([2.0, 2, 3, 1])))
    out = SelectLabeld("label", values=(4,))({"label": label})["label"]
    ref = Compose([LabelFilterd("label", applied_labels=[4]), MapLabelValued("label", [4], [1])])({"label": label.clone()})
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8 and torch.equal(out.affine, label.affine)
    assert torch.equal(out.as_tensor(), (label == 4).to(torch.uint8).as_tensor())
    assert torch.equal(out.as_tensor().float(), torch.as_tensor(ref["label"]).float())
    two = SelectLabeld("label", values=(1, 4))({"label": np.array([0, 1, 2, 4, 13])})["label"]
    assert two.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError):
        SelectLabeld("label", values=())


def test_manual_datasets_print_steps_and_exit_2(tool, tmp_path, capsys):
    for name, url in (("mosmeddata", "mosmed.ai"), ("btcv", "syn3193805")):
        with pytest.raises(SystemExit) as info:
            tool.PREPARERS[name](str(tmp_path))
        assert info.value.code == 2 and url in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "prepare_data_3d.py"), "btcv", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and "RawData/Training/img" in proc.stderr


def _tar_of(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        tf.add(folder, arcname=folder.name)
    return path


def test_msd_download_checks_md5_and_extracts(fakes, tool, tmp_path, monkeypatch, capsys):
    archive = _tar_of(fakes["msd_spleen"], tmp_path / "src.tar")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(tool.MSD_TASKS, "Task09_Spleen", dict(MSD_TASKS["Task09_Spleen"], url=archive.as_uri(), md5=md5))
    summary = tool.PREPARERS["msd_spleen"](str(tmp_path / "out"))
    assert summary["dataset_dir"] == str((tmp_path / "out" / "Task09_Spleen").resolve()) and summary["cases"] == 8
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "staging folder left behind"
    monkeypatch.setitem(tool.MSD_TASKS, "Task09_Spleen", dict(MSD_TASKS["Task09_Spleen"], url=archive.as_uri(), md5="0" * 32))
    with pytest.raises(DownloadError, match="expected md5"):
        tool.PREPARERS["msd_spleen"](str(tmp_path / "bad"))
    assert not list((tmp_path / "bad").iterdir()), "partial download left behind"


def test_download_md5_and_sha256_together(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc" * 1000)
    md5, sha = hashlib.md5(src.read_bytes()).hexdigest(), hashlib.sha256(src.read_bytes()).hexdigest()
    dest = download_file(src.as_uri(), tmp_path / "o" / "a.bin", sha256=sha, md5=md5, progress=False)
    assert dest.read_bytes() == src.read_bytes()
    # an existing file with a matching md5 is kept without a transfer
    assert download_file((tmp_path / "missing").as_uri(), dest, md5=md5, progress=False) == dest
    with pytest.raises(DownloadError, match="expected sha256"):
        download_file(src.as_uri(), tmp_path / "p" / "a.bin", sha256="1" * 64, md5=md5, progress=False)
    assert not list((tmp_path / "p").iterdir())


def _member(tf, name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "name, kind, linkname, message",
    [
        ("/etc/evil", tarfile.REGTYPE, "", "absolute path"),
        ("task/../../evil", tarfile.REGTYPE, "", "'..'"),
        ("task/link", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
        ("task/hard", tarfile.LNKTYPE, "task/ok.txt", "is a link"),
        ("task/dev", tarfile.CHRTYPE, "", "device"),
        ("task/fifo", tarfile.FIFOTYPE, "", "device"),
    ],
)
def test_safe_extract_tar_refuses_unsafe_members(tmp_path, name, kind, linkname, message):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _member(tf, "task/ok.txt")
        _member(tf, name, kind, linkname=linkname)
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract_tar(path, target)
    assert list(target.iterdir()) == [], "nothing may be extracted from an unsafe archive"


def test_safe_extract_tar_extracts_and_merges(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tf:
        _member(tf, "task", tarfile.DIRTYPE)
        _member(tf, "task/sub/a.txt", data=b"new")
    target = tmp_path / "out"
    (target / "task").mkdir(parents=True)
    (target / "task" / "keep.txt").write_text("keep")
    (target / "task" / "sub").mkdir()
    (target / "task" / "sub" / "a.txt").write_text("old")
    files = safe_extract_tar(path, target)
    assert files == [target.resolve() / "task" / "sub" / "a.txt"]
    assert (target / "task" / "sub" / "a.txt").read_text() == "new" and (target / "task" / "keep.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["task"]
