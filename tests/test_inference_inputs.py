"""Inference inputs (PNG/JPEG, NIfTI, DICOM series) and the run report handler."""

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.data.utils import affine_to_spacing
from monai.engines import SupervisedEvaluator
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureTyped,
    Invertd,
    LoadImaged,
    Orientationd,
    Resized,
    SaveImaged,
    ScaleIntensityd,
    Spacingd,
)
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from drd_components.data.inference_inputs import DicomSeriesReader, inference_datalist
from drd_components.data.transforms import AdaptChannelsd
from drd_components.handlers.run_report import RunReportWriter

ROWS, COLS, SLICES = 16, 18, 6
PIXEL_SPACING = (0.7, 0.8)  # (between rows, between columns)
SLICE_STEP = 2.5
TILT = np.deg2rad(20.0)
ROW_DIR = np.array([1.0, 0.0, 0.0])
COL_DIR = np.array([0.0, np.cos(TILT), -np.sin(TILT)])
ORIGIN = np.array([-10.0, 20.0, 30.0])


def write_dicom_series(folder: Path, prefix: str = "IM", seed: int = 0, geometry: bool = True) -> np.ndarray:
    """Write an oblique CT series (stored int16, rescale intercept -1024); return the HU volume (rows, cols, slices)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    normal = np.cross(ROW_DIR, COL_DIR)
    series, study = generate_uid(), generate_uid()
    volume = []
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = DicomDataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = CTImageStorage, sop, series, study
        ds.Modality, ds.PatientID, ds.SeriesDescription = "CT", "fake", f"{prefix} series"
        ds.InstanceNumber = SLICES - k  # stored in reverse, the reader must sort
        if geometry:
            ds.ImagePositionPatient = [round(float(v), 6) for v in ORIGIN + (SLICES - 1 - k) * SLICE_STEP * normal]
            ds.ImageOrientationPatient = [round(float(v), 6) for v in (*ROW_DIR, *COL_DIR)]
            ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        pixels = rng.integers(0, 2000, size=(ROWS, COLS)).astype(np.int16)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{prefix}{k:04d}", enforce_file_format=True)  # no extension, as PACS exports often do
        volume.append(pixels)
    return np.stack(volume[::-1], axis=-1).astype(np.float32) - 1024  # by InstanceNumber


def _expected_affine() -> np.ndarray:
    normal = np.cross(ROW_DIR, COL_DIR)
    lps = np.eye(4)
    lps[:3, 0] = ROW_DIR * PIXEL_SPACING[1]
    lps[:3, 1] = COL_DIR * PIXEL_SPACING[0]
    lps[:3, 2] = normal * SLICE_STEP
    lps[:3, 3] = ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _load(item):
    return LoadImaged("image", reader=DicomSeriesReader(), image_only=True, ensure_channel_first=True)(item)["image"]


def test_dicom_series_loads_with_shape_spacing_and_affine(tmp_path):
    volume = write_dicom_series(tmp_path / "patient" / "ct")
    (tmp_path / "patient" / "ct" / "notes.txt").write_text("not an image")
    items = inference_datalist(tmp_path, tmp_path / "out" / "list.json", spatial_dims=3)
    assert items == [{"image": str((tmp_path / "patient" / "ct").resolve()), "case_id": "patient/ct"}]
    assert json.loads((tmp_path / "out" / "list.json").read_text()) == {"testing": items}
    image = _load(items[0])
    assert tuple(image.shape) == (1, COLS, ROWS, SLICES)
    np.testing.assert_allclose(affine_to_spacing(image.affine).numpy(), [0.8, 0.7, 2.5], atol=1e-4)
    np.testing.assert_allclose(image.affine.numpy(), _expected_affine(), atol=1e-4)
    np.testing.assert_allclose(image[0].numpy(), volume.transpose(1, 0, 2))
    # MONAI's own reader agrees on the folder item
    ref = LoadImaged("image", reader="PydicomReader", image_only=True, ensure_channel_first=True)(items[0])["image"]
    assert torch.equal(ref.as_tensor(), image.as_tensor()) and torch.allclose(ref.affine, image.affine)
    out = Spacingd("image", pixdim=(1.0, 1.0, 1.0))(Orientationd("image", axcodes="RAS")({"image": image}))["image"]
    assert out.ndim == 4 and torch.allclose(affine_to_spacing(out.affine).float(), torch.ones(3))


def test_two_series_in_one_folder_give_two_items(tmp_path, caplog):
    a = write_dicom_series(tmp_path / "dump", prefix="A", seed=1)
    b = write_dicom_series(tmp_path / "dump", prefix="B", seed=2)
    caplog.set_level(logging.INFO)
    items = inference_datalist(tmp_path / "dump", spatial_dims=3)
    assert len(items) == 2 and all(isinstance(x["image"], list) and len(x["image"]) == SLICES for x in items)
    assert len({x["case_id"] for x in items}) == 2 and all(x["case_id"].startswith("dump/") for x in items)
    loaded = [_load(x)[0].numpy() for x in items]
    expected = {Path(items[0]["image"][0]).name[0]: a, "B" if Path(items[0]["image"][0]).name[0] == "A" else "A": b}
    for item, vol in zip(items, loaded):
        np.testing.assert_allclose(vol, expected[Path(item["image"][0]).name[0]].transpose(1, 0, 2))
    # a single file of one series selects that series only
    one = inference_datalist(items[1]["image"][2], spatial_dims=3)
    assert len(one) == 1 and one[0]["image"] == items[1]["image"]


def test_nifti_and_dicom_mixed_and_single_nifti(tmp_path, caplog):
    write_dicom_series(tmp_path / "in" / "series1")
    affine = np.diag([-1.2, -1.2, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 5), np.float32), affine), tmp_path / "in" / "scan.nii.gz")
    (tmp_path / "in" / "report.pdf").write_bytes(b"%PDF")
    caplog.set_level(logging.INFO)
    items = inference_datalist(tmp_path / "in", spatial_dims=3)
    assert [x["case_id"] for x in items] == ["scan", "series1"]
    assert "report.pdf" in caplog.text
    image = _load(items[0])
    assert tuple(image.shape) == (1, 10, 12, 5)
    np.testing.assert_allclose(affine_to_spacing(image.affine).numpy(), [1.2, 1.2, 3.0])
    assert inference_datalist(tmp_path / "in" / "scan.nii.gz", spatial_dims=3) == [items[0]]


def test_png_jpeg_inputs(tmp_path, caplog):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).save(folder / "sub" / "b.JPG")
    (folder / "readme.txt").write_text("x")
    caplog.set_level(logging.INFO)
    items = inference_datalist(folder)
    assert [x["case_id"] for x in items] == ["a", "sub/b"] and "readme.txt" in caplog.text
    assert [tuple(LoadImaged("image", image_only=True, ensure_channel_first=True)(x)["image"].shape) for x in items] == [
        (1, 30, 20),
        (3, 30, 20),
    ]
    assert inference_datalist(folder / "a.png") == [items[0]]


def test_bad_inputs_raise_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable input in .*empty"):
        inference_datalist(tmp_path / "empty", spatial_dims=3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference_datalist(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported input file .*notes.txt"):
        inference_datalist(tmp_path / "notes.txt")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="NIfTI files"):
        inference_datalist(tmp_path / "x.png", spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        inference_datalist(tmp_path, spatial_dims=4)
    write_dicom_series(tmp_path / "nogeo", geometry=False)
    with pytest.raises(FileNotFoundError, match="no usable input"):
        inference_datalist(tmp_path / "nogeo", spatial_dims=3)
    with pytest.raises(ValueError, match="not a DICOM file"):
        DicomSeriesReader().read(str(tmp_path / "notes.txt"))


def _run(items, preprocessing, network, postprocessing, handler):
    loader = DataLoader(Dataset(items, transform=preprocessing), batch_size=1, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=network, postprocessing=postprocessing,
        val_handlers=[handler],
    )
    evaluator.run()


def test_run_report_segmentation_dicom_and_nifti(tmp_path):
    """The 3D inference chain recommended for bundles: outputs back on the input grid, one report row per case."""
    write_dicom_series(tmp_path / "in" / "ct")
    nib.save(nib.Nifti1Image(np.ones((10, 12, 5), np.float32), np.diag([-1.2, -1.2, 3.0, 1.0])), tmp_path / "in" / "b.nii.gz")
    items = inference_datalist(tmp_path / "in", spatial_dims=3)
    pre = Compose(
        [
            LoadImaged("image", reader=DicomSeriesReader(), image_only=True, ensure_channel_first=True),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.5, 1.5, 2.0), mode="bilinear"),
            EnsureTyped("image", dtype=torch.float32),
        ]
    )
    post = Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
            SaveImaged("pred", output_dir=str(tmp_path / "out"), output_postfix="seg", output_dtype=np.uint8,
                       resample=False, separate_folder=False, print_log=False, savepath_in_metadict=True),
        ]
    )
    report = RunReportWriter(tmp_path / "out", task="segmentation")
    _run(items, pre, torch.nn.Conv3d(1, 2, 1), post, report)
    rows = list(csv.DictReader(open(tmp_path / "out" / "run_report.csv")))
    data = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert [r["case_id"] for r in rows] == ["b", "ct"] and data["cases"] == 2 and data["task"] == "segmentation"
    by_id = {r["case_id"]: r for r in data["rows"]}
    assert by_id["ct"]["input_shape"] == [COLS, ROWS, SLICES]
    np.testing.assert_allclose(by_id["ct"]["input_spacing"], [0.8, 0.7, 2.5], atol=1e-4)
    assert by_id["b"]["input_spacing"] == [1.2, 1.2, 3.0] and by_id["b"]["input_file"].endswith("b.nii.gz")
    for row in data["rows"]:
        seg = nib.load(row["output_file"])
        assert list(seg.shape[:3]) == row["input_shape"] and row["seconds"] >= 0
    ct_seg = nib.load(by_id["ct"]["output_file"])
    np.testing.assert_allclose(ct_seg.affine, _expected_affine(), atol=1e-3)
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_run_report_classification_png(tmp_path):
    for i, value in enumerate((10, 200, 90)):
        Image.fromarray(np.full((12, 14), value, np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "list.csv").write_text("ignored")
    items = inference_datalist(tmp_path, spatial_dims=2)
    pre = Compose(
        [
            LoadImaged("image", image_only=True, ensure_channel_first=True),
            AdaptChannelsd("image", channels=3),
            ScaleIntensityd("image"),
            Resized("image", spatial_size=(8, 8)),
            EnsureTyped("image", dtype=torch.float32),
        ]
    )
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    report = RunReportWriter(tmp_path / "out", task="classification", class_names=["benign", "malignant", "normal"])
    _run(items, pre, net, Activationsd("pred", softmax=True), report)
    rows = list(csv.DictReader(open(tmp_path / "out" / "run_report.csv")))
    assert [r["case_id"] for r in rows] == ["img0", "img1", "img2"]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("benign", "malignant", "normal")]
        assert abs(sum(probs) - 1) < 1e-4 and row["predicted_class"] == ["benign", "malignant", "normal"][int(np.argmax(probs))]
        assert row["input_shape"] == "14 x 12" and row["model_input_shape"] == "8 x 8"
    data = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert data["cases"] == 3 and data["class_names"] == ["benign", "malignant", "normal"]
    with pytest.raises(ValueError, match="expected 2"):
        bad = RunReportWriter(tmp_path / "o2", task="classification", class_names=["a", "b"])
        _run(items[:1], pre, net, Activationsd("pred", softmax=True), bad)
    with pytest.raises(ValueError, match="task"):
        RunReportWriter(tmp_path, task="detection")
