"""Bad inputs give one clear error, naming the file / config key and what was expected, before training."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from drd_components.data import busi_classification_datalist
from drd_components.data.synthetic import write_synthetic_busi
from drd_components.data.validation import DataValidationError, check_dataset_dir, read_image_header, validate_datalist
from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import ResNetStandInTeacher
from drd_components.teachers.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("DRD_DATA_ROOT", REPO.parent / "shared" / "data"))


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)
    return str(path)


def _nii(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def _dicom(path: Path, rows: int = 8, cols: int = 8) -> str:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((rows, cols), dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def _problems(excinfo) -> str:
    return "\n".join(excinfo.value.problems)


# ---------------------------------------------------------------- dataset_dir


@pytest.mark.parametrize("case,message", [
    ("unset", "'dataset_dir' is not set"),
    ("missing", "does not exist"),
    ("file", "is a file"),
    ("empty", "is empty"),
])
def test_dataset_dir_problems_name_the_key(tmp_path, case, message):
    path = {"unset": "", "missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty": tmp_path / "empty"}[case]
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("x")
    with pytest.raises(DataValidationError, match=message) as excinfo:
        check_dataset_dir(path)
    assert "dataset_dir" in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_dataset_dir_ok(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    assert check_dataset_dir(tmp_path, key="data_root") == tmp_path.resolve()


# ---------------------------------------------------------------- 2D classification


@pytest.fixture
def cls_list(tmp_path):
    rng = np.random.default_rng(0)
    items = [{"image": _png(tmp_path / f"img{i}.png", rng.integers(0, 255, (16, 12))), "label": i % 3} for i in range(4)]
    items.append({"image": _png(tmp_path / "rgb.png", rng.integers(0, 255, (16, 12, 3))), "label": 1})
    return {"training": items[:3], "validation": items[3:], "test": []}


def test_valid_classification_datalist_is_returned_unchanged(cls_list):
    before = json.dumps(cls_list)
    assert validate_datalist(cls_list, "classification", 3, 1, 2, accepted_channels=[1, 3, 4]) is cls_list
    assert json.dumps(cls_list) == before


@pytest.mark.parametrize("label,message", [
    (3, r"'label' = 3 is outside the class range \[0, 3\)"),
    (-1, r"'label' = -1 is outside the class range"),
    ("benign", "expected an integer class"),
    (1.0, "expected an integer class"),
    (True, "expected an integer class"),
])
def test_classification_label_out_of_range_or_not_int(cls_list, label, message):
    cls_list["validation"][1]["label"] = label
    with pytest.raises(DataValidationError, match=message) as excinfo:
        validate_datalist(cls_list, "classification", 3, 1, 2, accepted_channels=[1, 3, 4])
    assert "[validation][1]" in str(excinfo.value) and "rgb.png" in str(excinfo.value)


def test_corrupt_and_truncated_png(cls_list, tmp_path):
    (tmp_path / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # header then garbage
    data = Path(cls_list["training"][1]["image"]).read_bytes()
    Path(cls_list["training"][1]["image"]).write_bytes(data[: len(data) // 2])  # cut in half
    with pytest.raises(DataValidationError) as excinfo:
        validate_datalist(cls_list, "classification", 3, 1, 2, accepted_channels=[1, 3, 4])
    text = _problems(excinfo)
    assert "[training][0]" in text and "img0.png: cannot read the image" in text
    assert "[training][1]" in text and "img1.png: cannot read the image" in text


def test_wrong_channel_count(cls_list, tmp_path):
    rng = np.random.default_rng(1)
    cls_list["training"][2]["image"] = _png(tmp_path / "la.png", rng.integers(0, 255, (16, 12, 2)), mode="LA")
    with pytest.raises(DataValidationError, match=r"la.png: has 2 channel\(s\), expected 1 or 3 or 4"):
        validate_datalist(cls_list, "classification", 3, 1, 2, accepted_channels=[1, 3, 4])
    with pytest.raises(DataValidationError, match=r"rgb.png: has 3 channel\(s\), expected 1"):
        validate_datalist(cls_list, "classification", 3, 1, 2)  # without a channel adapter only 1 is accepted


def test_missing_files_are_all_listed_even_when_sampling(cls_list):
    for item in cls_list["training"]:
        item["image"] = item["image"] + ".gone"
    with pytest.raises(DataValidationError) as excinfo:
        validate_datalist(cls_list, "classification", 3, 1, 2, accepted_channels=[1, 3, 4], sample=1)
    assert sum("image file not found" in p for p in excinfo.value.problems) == 3


def test_missing_keys_empty_split_and_non_dict_items(cls_list):
    cls_list["training"] = []
    cls_list["validation"] = [{"label": 0}, "img.png", {"image": cls_list["validation"][0]["image"]}]
    with pytest.raises(DataValidationError) as excinfo:
        validate_datalist(cls_list, "classification", 3, 1, 2, accepted_channels=[1, 3, 4])
    text = _problems(excinfo)
    assert "split 'training' is missing or empty" in text
    assert "[validation][0]: no 'image' key" in text
    assert "[validation][1]: is a str" in text
    assert "no 'label' key" in text


def test_long_problem_lists_are_truncated_with_a_count(tmp_path):
    items = [{"image": str(tmp_path / f"missing{i}.png"), "label": 0} for i in range(30)]
    with pytest.raises(DataValidationError) as excinfo:
        validate_datalist({"training": items}, "classification", 2, 1, 2, max_listed=5)
    assert len(excinfo.value.problems) == 30
    assert "30 problem(s)" in str(excinfo.value) and "... and 25 more problem(s)" in str(excinfo.value)
    assert str(excinfo.value).count("image file not found") == 5


def test_invalid_arguments():
    with pytest.raises(ValueError, match="task must be"):
        validate_datalist([], "detection", 2, 1, 2)
    with pytest.raises(ValueError, match="sample must be"):
        validate_datalist([], "classification", 2, 1, 2, sample=0)


# ---------------------------------------------------------------- 2D segmentation


def test_2d_segmentation_label_size_and_values(tmp_path):
    rng = np.random.default_rng(2)
    image = _png(tmp_path / "a.png", rng.integers(0, 255, (16, 12)))
    good = _png(tmp_path / "a_lbl.png", rng.integers(0, 2, (16, 12)))
    small = _png(tmp_path / "a_small.png", rng.integers(0, 2, (8, 12)))
    values = _png(tmp_path / "a_255.png", rng.integers(0, 2, (16, 12)) * 255)
    validate_datalist([{"image": image, "label": good}], "segmentation", 2, 1, 2)
    with pytest.raises(DataValidationError) as excinfo:
        validate_datalist([{"image": image, "label": small}, {"image": image, "label": values},
                           {"image": image, "label": str(tmp_path / "nope.png")}], "segmentation", 2, 1, 2)
    text = _problems(excinfo)
    assert "[datalist][0]" in text and "a_small.png: label is (12, 8), its image is (12, 16): expected the same size" in text
    assert "a_255.png: label values [255] are outside the class range [0, 2)" in text
    assert "[datalist][2]" in text and "nope.png: label file not found" in text


def test_busi_style_mask_files(tmp_path):
    data = write_synthetic_busi(tmp_path / "busi", n_per_class=2, size=16, seed=0)
    from drd_components.data.busi_segmentation import busi_segmentation_datalist

    datalist = busi_segmentation_datalist(data, val_fraction=0.25, test_fraction=0.25)
    validate_datalist(datalist, "segmentation", 2, 1, 2, label_key=None, mask_keys=["masks"], accepted_channels=[1, 3, 4])
    item = datalist["training"][0]
    _png(Path(item["masks"][0]), np.zeros((20, 16)))  # mask of another size
    with pytest.raises(DataValidationError, match=r"'masks' file is \(16, 20\), its image .* is \(16, 16\)"):
        validate_datalist(datalist, "segmentation", 2, 1, 2, label_key=None, mask_keys=["masks"],
                          accepted_channels=[1, 3, 4])


# ---------------------------------------------------------------- 3D segmentation (NIfTI, DICOM)


@pytest.fixture
def vol_list(tmp_path):
    rng = np.random.default_rng(3)
    items = []
    for i in range(2):
        items.append({"image": _nii(tmp_path / f"v{i}.nii.gz", rng.random((10, 12, 6)).astype(np.float32)),
                      "label": _nii(tmp_path / f"v{i}_gt.nii.gz", rng.integers(0, 4, (10, 12, 6)).astype(np.uint8))})
    return {"training": items[:1], "validation": items[1:]}


def test_3d_valid(vol_list):
    assert validate_datalist(vol_list, "segmentation", 4, 1, 3) is vol_list


def test_3d_problems(vol_list, tmp_path):
    rng = np.random.default_rng(4)
    vol_list["training"][0]["label"] = _nii(tmp_path / "bad_gt.nii.gz", np.full((10, 12, 5), 7, dtype=np.uint8))
    vol_list["validation"][0]["image"] = _nii(tmp_path / "two.nii.gz", rng.random((10, 12, 6, 2)).astype(np.float32))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(os.urandom(500))
    vol_list["validation"].append({"image": str(corrupt), "label": vol_list["validation"][0]["label"]})
    with pytest.raises(DataValidationError) as excinfo:
        validate_datalist(vol_list, "segmentation", 4, 1, 3)
    text = _problems(excinfo)
    assert "[training][0]" in text and "bad_gt.nii.gz: label is (10, 12, 5), its image is (10, 12, 6)" in text
    assert "bad_gt.nii.gz: label values [7] are outside the class range [0, 4)" in text
    assert "[validation][0]" in text and "two.nii.gz: has 2 channel(s), expected 1" in text
    assert "[validation][1]" in text and "corrupt.nii.gz: cannot read the image" in text


def test_2d_file_given_to_a_3d_bundle(vol_list, tmp_path):
    vol_list["training"][0]["image"] = _png(tmp_path / "flat.png", np.zeros((10, 12)))
    with pytest.raises(DataValidationError, match="flat.png: cannot read the image .*expected a 3D volume"):
        validate_datalist(vol_list, "segmentation", 4, 1, 3)


def test_dicom_header_and_corrupt_dicom(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        _dicom(series / f"{i}.dcm", rows=8, cols=6)
    assert read_image_header(series, 3).spatial_shape == (8, 6, 3)
    assert read_image_header(series / "0.dcm", 2).spatial_shape == (8, 6)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(DataValidationError, match="bad.dcm: cannot read the image"):
        validate_datalist([{"image": str(bad), "label": 0}], "classification", 2, 1, 2)


# ---------------------------------------------------------------- teacher / student


def test_teacher_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "student.pt"
    torch.save(StagedResNet18(spatial_dims=2, in_channels=1, num_classes=3, block_inplanes=(8, 16, 32, 64)).state_dict(), path)
    with pytest.raises(CheckpointError, match="no key in common .* checkpoint of a different model") as excinfo:
        ResNetStandInTeacher(block_inplanes=(8, 16, 32, 64), checkpoint=str(path))
    assert str(path) in str(excinfo.value)
    other = tmp_path / "wider.pt"
    torch.save(ResNetStandInTeacher(block_inplanes=(16, 32, 64, 128)).net.state_dict(), other)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*conv1.weight: file \(16, 1, 7, 7\) vs model \(8, 1, 7, 7\)"):
        ResNetStandInTeacher(block_inplanes=(8, 16, 32, 64), checkpoint=str(other))


def test_teacher_and_student_spatial_dims_disagree():
    student = StagedResNet18(spatial_dims=2, in_channels=1, num_classes=3, block_inplanes=(8, 16, 32, 64))
    teacher3d = ResNetStandInTeacher(spatial_dims=3, block_inplanes=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="teacher ResNetStandInTeacher is 3D but the student StagedResNet18 is 2D"):
        ReprogrammingModule.from_models(teacher3d, student, [2, 1, 32, 32])
    teacher2d = ResNetStandInTeacher(spatial_dims=2, block_inplanes=(8, 16, 32, 64))
    with pytest.raises(ValueError, match=r"input_shape \[2, 1, 32, 32, 32\] must be B x C x spatial with 2"):
        ReprogrammingModule.from_models(teacher2d, student, [2, 1, 32, 32, 32])
    with pytest.raises(ValueError, match=r"dry run of the student StagedResNet18 on input shape \[2, 3, 32, 32\]"):
        ReprogrammingModule.from_models(teacher2d, student, [2, 3, 32, 32])


# ---------------------------------------------------------------- in a bundle, and on the real BUSI set


def test_bundle_datalist_expression_stops_before_training(tmp_path):
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / "busi_ultrasound_classification" / "configs"
    data = write_synthetic_busi(tmp_path / "busi", n_per_class=3, size=16, seed=0)
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser["imports"] = parser["imports"] + ["$import drd_components.data.validation"]
    parser["datalist"] = (
        "$drd_components.data.validation.validate_datalist(" + parser["datalist"][1:]
        + ", task='classification', num_classes=@num_classes, in_channels=@in_channels, spatial_dims=2,"
        " accepted_channels=[1, 3, 4])"
    )
    parser.update({"dataset_dir": str(data), "output_dir": str(tmp_path / "out")})
    parser.parse()
    assert len(parser.get_parsed_content("datalist")["training"]) > 0
    next(data.glob("benign/*).png")).write_bytes(b"not a png")
    parser.parse()
    with pytest.raises(RuntimeError, match="Failed to evaluate") as excinfo:  # MONAI wraps the expression's error
        parser.get_parsed_content("datalist")
    assert isinstance(excinfo.value.__cause__, DataValidationError)
    assert "cannot read the image" in str(excinfo.value.__cause__)


def test_real_busi_validation_is_cheap():
    root = DATA_ROOT / "busi"
    if not root.is_dir():
        pytest.skip(f"real BUSI data not found at {root} (set DRD_DATA_ROOT)")
    datalist = busi_classification_datalist(root)
    start = time.perf_counter()
    validate_datalist(datalist, "classification", 3, 1, 2, accepted_channels=[1, 3, 4])
    elapsed = time.perf_counter() - start
    print(f"validated {sum(map(len, datalist.values()))} BUSI images in {elapsed:.2f} s")
    assert elapsed < 30
