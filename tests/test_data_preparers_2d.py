"""Datalist functions and prepare_data commands of the 2D datasets and MedMNIST, on fake layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from drd_components.data.brain_tumor import brain_tumor_mri_datalist, brain_tumor_mri_split
from drd_components.data.duplicates import DuplicateGroup, find_duplicate_groups, resolve_cross_split_duplicates
from drd_components.data.fives import fives_datalist
from drd_components.data.ham10000 import ham10000_datalist
from drd_components.data.isic_segmentation import isic2018_segmentation_datalist
from drd_components.data.kvasir import BinarizeLabeld, kvasir_seg_datalist
from drd_components.data.medmnist import medmnist_datalist
from drd_components.data.pneumonia import pneumonia_xray_datalist
from tests.fake_datasets import FAKE_DATASETS
from tools.prepare_data import PrepareData

SPLITS = ("training", "validation", "test")
DATALIST_FUNCTIONS = {
    "brain_tumor_mri": brain_tumor_mri_datalist,
    "ham10000": ham10000_datalist,
    "pneumonia_xray": pneumonia_xray_datalist,
    "retinamnist": lambda d, o=None: medmnist_datalist(d, o, flag="retinamnist", verify_md5=False),
    "nodulemnist3d": lambda d, o=None: medmnist_datalist(d, o, flag="nodulemnist3d", verify_md5=False),
    "vesselmnist3d": lambda d, o=None: medmnist_datalist(d, o, flag="vesselmnist3d", verify_md5=False),
    "fives": fives_datalist,
    "kvasir_seg": kvasir_seg_datalist,
    "isic2018_seg": isic2018_segmentation_datalist,
}


def _images(parts):
    return {s: [r["image"] for r in parts[s]] for s in SPLITS}


@pytest.mark.parametrize("name", sorted(DATALIST_FUNCTIONS))
def test_datalist_on_fake_layout(name, tmp_path):
    dataset_dir = FAKE_DATASETS[name](tmp_path / "data")
    out = tmp_path / "out" / "datalist.json"
    parts = DATALIST_FUNCTIONS[name](dataset_dir, out)
    assert set(parts) == set(SPLITS) and all(parts[s] for s in SPLITS), {s: len(parts[s]) for s in parts}
    images = _images(parts)
    all_images = [p for s in SPLITS for p in images[s]]
    assert len(all_images) == len(set(all_images)), "an image is in two splits"
    for p in all_images:
        assert os.path.isabs(p) and os.path.isfile(p)
    for r in (r for s in SPLITS for r in parts[s]):
        assert isinstance(r["label"], int) or os.path.isfile(r["label"])
    assert json.loads(out.read_text()) == parts
    # deterministic: same result from a second call; loadable by MONAI
    assert DATALIST_FUNCTIONS[name](dataset_dir, out) == parts
    first = parts["training"][0]
    keys = ["image"] + (["label"] if isinstance(first["label"], str) else [])
    data = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])(first)
    assert data["image"].ndim == (4 if name.endswith("3d") else 3)


def test_brain_tumor_duplicates_moved_and_reported(tmp_path):
    d = FAKE_DATASETS["brain_tumor_mri"](tmp_path)
    out = tmp_path / "lists" / "bt.json"
    parts = brain_tumor_mri_datalist(d, out)
    report = json.loads((tmp_path / "lists" / "bt_duplicates.json").read_text())
    leak_train, leak_test = str(d / "Training/no_tumor/tr (0).jpg"), str(d / "Testing/no_tumor/image(9).jpg")
    near_train, near_test = str(d / "Training/glioma_tumor/tr (1).jpg"), str(d / "Testing/glioma_tumor/image(9).png")
    test = set(_images(parts)["test"])
    assert {leak_train, leak_test, near_train, near_test} <= test
    assert report["counts"]["cross_split_exact_groups"] == 1
    assert report["counts"]["cross_split_near_groups"] == 1
    moved = {m["image"]: (m["from"], m["to"]) for g in report["cross_split_groups"] for m in g["moved"]}
    assert moved[leak_train][1] == "test" and moved[near_train][1] == "test"
    assert report["counts"]["moved_records"] == 2
    # no other fake image is flagged (distinct images stay apart)
    assert report["counts"]["groups"] == 2
    # without moving: detected, reported, but left in place
    kept, rep = brain_tumor_mri_split(d, move_duplicates=False)
    assert leak_test in _images(kept)["test"] and leak_train not in _images(kept)["test"]
    assert rep["applied"] is False and rep["counts"]["cross_split_groups"] == 2


def test_find_duplicate_groups_exact_near_and_order(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    a = np.asarray(Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).resize((64, 64), Image.Resampling.BICUBIC))
    b = np.asarray(Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).resize((64, 64), Image.Resampling.BICUBIC))
    Image.fromarray(a).save(tmp_path / "a.png")
    (tmp_path / "a_copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    Image.fromarray(a).resize((50, 50)).save(tmp_path / "a_small.jpg", quality=90)
    Image.fromarray(b).save(tmp_path / "b.png")
    files = sorted(str(p) for p in tmp_path.iterdir())
    exact = find_duplicate_groups(files, near=False)
    assert [g.files for g in exact] == [(str(tmp_path / "a.png"), str(tmp_path / "a_copy.png"))]
    near = find_duplicate_groups(list(reversed(files)))
    assert len(near) == 1 and near[0].kind == "near" and len(near[0].files) == 3
    assert find_duplicate_groups(files) == near
    with pytest.raises(FileNotFoundError, match="missing.png"):
        find_duplicate_groups([str(tmp_path / "missing.png")])


def test_resolve_keeps_validation_only_groups_in_validation():
    parts = {"training": [{"image": "x1"}, {"image": "y"}], "validation": [{"image": "x2"}], "test": [{"image": "z"}]}
    new, report = resolve_cross_split_duplicates(parts, [DuplicateGroup(("x1", "x2"), "exact")], keep="test")
    assert [r["image"] for r in new["validation"]] == ["x2", "x1"] and [r["image"] for r in new["training"]] == ["y"]
    assert report["counts"]["moved_by_direction"] == {"training->validation": 1}
    with pytest.raises(ValueError, match="keep"):
        resolve_cross_split_duplicates(parts, [], keep="nowhere")


def test_ham10000_groups_lesions(tmp_path):
    parts = ham10000_datalist(FAKE_DATASETS["ham10000"](tmp_path), val_fraction=0.25, test_fraction=0.25)
    where = {}
    for s in SPLITS:
        for r in parts[s]:
            where.setdefault(r["lesion_id"], set()).add(s)
    assert all(len(v) == 1 for v in where.values())
    per_lesion = {}
    for r in (r for s in SPLITS for r in parts[s]):
        per_lesion[r["lesion_id"]] = per_lesion.get(r["lesion_id"], 0) + 1
    assert sum(1 for n in per_lesion.values() if n == 2) == 7  # the two-image lesions stayed whole
    for s in SPLITS:  # stratified: every diagnosis in every split (7 lesions each)
        assert {r["class_name"] for r in parts[s]} == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert ham10000_datalist(tmp_path / "ham10000", seed=1) != ham10000_datalist(tmp_path / "ham10000", seed=0)


def test_pneumonia_merges_official_val_and_keeps_test(tmp_path):
    d = FAKE_DATASETS["pneumonia_xray"](tmp_path)
    parts = pneumonia_xray_datalist(d / "chest_xray", val_fraction=0.25)  # the chest_xray folder itself works too
    assert len(parts["test"]) == 4 and all("/test/" in r["image"] for r in parts["test"])
    assert len(parts["training"]) + len(parts["validation"]) == 14
    assert sum("/val/" in r["image"] for s in ("training", "validation") for r in parts[s]) == 2


def test_medmnist_md5_conversion_and_skip(tmp_path):
    d = FAKE_DATASETS["retinamnist"](tmp_path)
    with pytest.raises(ValueError, match="not the official retinamnist.npz MD5"):
        medmnist_datalist(d, tmp_path / "o" / "dl.json")
    parts = medmnist_datalist(d, tmp_path / "o" / "dl.json", verify_md5=False)
    assert [len(parts[s]) for s in SPLITS] == [10, 5, 5]
    first = Path(parts["training"][0]["image"])
    assert first.parent.parent == tmp_path / "o" / "retinamnist_images"
    with np.load(d / "retinamnist.npz") as z:
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(first)), z["train_images"][0])
        assert [r["label"] for r in parts["test"]] == z["test_labels"][:, 0].tolist()
    mtime = first.stat().st_mtime_ns
    medmnist_datalist(d, tmp_path / "o" / "dl.json", verify_md5=False)
    assert first.stat().st_mtime_ns == mtime  # conversion skipped
    first.unlink()
    medmnist_datalist(d, tmp_path / "o" / "dl.json", verify_md5=False)
    assert first.is_file()  # incomplete conversion redone
    d3 = FAKE_DATASETS["nodulemnist3d"](tmp_path / "n")
    p3 = medmnist_datalist(d3, tmp_path / "n" / "dl.json", flag="nodulemnist3d", verify_md5=False)
    vol = LoadImaged("image", image_only=True)(p3["test"][1])["image"]
    assert tuple(vol.shape) == (28, 28, 28) and p3["test"][1]["label"] == 1
    with pytest.raises(ValueError, match="unknown MedMNIST flag"):
        medmnist_datalist(d, flag="pathmnist")


def test_kvasir_binarize_jpeg_masks(tmp_path):
    parts = kvasir_seg_datalist(FAKE_DATASETS["kvasir_seg"](tmp_path))
    assert [len(parts[s]) for s in SPLITS] == [8, 1, 1]
    data = Compose([LoadImaged("label", image_only=True), EnsureChannelFirstd("label")])(parts["training"][0])
    raw = torch.as_tensor(data["label"])
    assert raw.shape[0] == 3 and len(torch.unique(raw)) > 2  # JPEG artefacts: not a clean 0/255 mask
    out = BinarizeLabeld("label")(data)["label"]
    assert isinstance(out, MetaTensor) and out.shape[0] == 1 and set(torch.unique(out).tolist()) == {0, 1}


def test_isic_uses_official_validation(tmp_path):
    parts = isic2018_segmentation_datalist(FAKE_DATASETS["isic2018_seg"](tmp_path), val_fraction=0.25, test_fraction=0.25)
    assert len(parts["validation"]) == 3 and all("Validation_Input" in r["image"] for r in parts["validation"])
    assert len(parts["test"]) == 2 and len(parts["training"]) == 6
    assert all(r["label"].endswith("_segmentation.png") for s in SPLITS for r in parts[s])


@pytest.mark.parametrize(
    "fn, expected",
    [
        (brain_tumor_mri_datalist, "Training,Testing"),
        (ham10000_datalist, "HAM10000_metadata.csv"),
        (pneumonia_xray_datalist, "NORMAL,PNEUMONIA"),
        (fives_datalist, "Ground truth"),
        (kvasir_seg_datalist, "masks/"),
        (isic2018_segmentation_datalist, "ISIC2018_Task1_Training_GroundTruth"),
        (lambda d: medmnist_datalist(d, flag="vesselmnist3d"), "vesselmnist3d.npz"),
    ],
)
def test_bad_layout_names_folder_and_layout(fn, expected, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        fn(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("name", sorted(FAKE_DATASETS))
def test_prepare_data_commands_on_fake_layouts(name, tmp_path, capsys):
    dataset_dir = FAKE_DATASETS[name](tmp_path / "data")
    kwargs = {"verify_md5": False} if name.endswith("mnist") or name.endswith("mnist3d") else {}
    assert getattr(PrepareData(), name)(output_dir=str(tmp_path / "out"), dataset_dir=str(dataset_dir), **kwargs) is None
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"] == {k: len(v) for k, v in json.loads((tmp_path / "out" / "datalist.json").read_text()).items()}
    assert (tmp_path / "out" / "datalist.json").is_file()
    assert sum(summary["split"].values()) > 0
    if name == "brain_tumor_mri":
        assert summary["duplicates"]["moved_records"] == 2
        assert sum(summary["per_class"]["test"].values()) == summary["split"]["test"]


@pytest.mark.parametrize("name", ["ham10000", "pneumonia_xray", "fives", "isic2018_seg"])
def test_registration_only_sources_print_instructions(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        getattr(PrepareData(), name)(output_dir=str(tmp_path))
    assert e.value.code == 2
    out = capsys.readouterr().out
    assert "https://" in out and "--dataset_dir" in out


def test_list_and_3d_commands(capsys):
    PrepareData().list()
    lines = capsys.readouterr().out.splitlines()
    names = {line.split()[0] for line in lines}
    assert {"busi", "retinamnist", "kvasir_seg", "msd_spleen", "btcv"} <= names
    assert any(line.startswith("retinamnist") and "automatic" in line and "zenodo.org" in line for line in lines)
    assert any(line.startswith("fives") and "manual" in line for line in lines)
    assert callable(getattr(PrepareData, "msd_spleen"))


def test_3d_commands_fail_clearly_without_their_module(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "tools.prepare_data_3d", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "prepare_data_3d", None)
    with pytest.raises(RuntimeError, match="prepare_data_3d"):
        PrepareData().msd_spleen(output_dir=str(tmp_path))
