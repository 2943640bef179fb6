"""Segmentation data layouts (ACDC, MSD, BUSI masks), transforms and metrics."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.transforms import LoadImaged
from PIL import Image

from drd_components.data.acdc import acdc_datalist, find_acdc_cases, read_info_cfg, write_synthetic_acdc
from drd_components.data.busi_segmentation import busi_segmentation_datalist
from drd_components.data.msd import msd_datalist, nifti_folder_datalist, write_synthetic_msd_hippocampus
from drd_components.data.seg_transforms import AffineFromZoomsd, LoadUnionMaskd, ValidRegiond
from drd_components.metrics.cardiac import EjectionFractionError, ejection_fraction
from drd_components.metrics.segmentation import HausdorffDistance95Metric, SelectChannels, hausdorff_distance_95, surface_voxels


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    return write_synthetic_acdc(tmp_path_factory.mktemp("acdc") / "ACDC", patients_per_group=3, shape=(12, 14, 4))


def test_info_cfg_parsing(tmp_path):
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 9\nGroup: DCM\nHeight: 178\nNbFrame: 19\nWeight: 85\n")
    info = read_info_cfg(cfg)
    assert info == {"ED": 1, "ES": 9, "Group": "DCM", "NbFrame": 19, "Height": 178.0, "Weight": 85.0}
    cfg.write_text("ES: 9\nGroup: DCM\n")
    with pytest.raises(ValueError, match="ED"):
        read_info_cfg(cfg)


def test_acdc_frames_come_from_info_cfg(acdc):
    cases = find_acdc_cases(acdc)
    assert len(cases) == 15
    for c in cases:
        info = read_info_cfg(acdc / "training" / c["patient"] / "Info.cfg")
        assert c["frames"]["ES"]["image"].endswith(f"_frame{info['ES']:02d}.nii.gz")
        assert c["frames"]["ED"]["label"].endswith("_frame01_gt.nii.gz")


def test_acdc_split_is_by_patient_and_stratified_by_group(acdc):
    a = acdc_datalist(acdc, val_fraction=0.34, test_fraction=0.33, seed=1)
    assert a == acdc_datalist(acdc, val_fraction=0.34, test_fraction=0.33, seed=1)
    patients = {k: {r["patient"] for r in v} for k, v in a.items()}
    assert not (patients["training"] & patients["validation"]) and not (patients["training"] & patients["test"])
    for part, records in a.items():
        groups = sorted(r["group"] for r in records if r["phase"] == "ED")
        assert groups == ["DCM", "HCM", "MINF", "NOR", "RV"], part  # one patient of each group per part
        assert {r["phase"] for r in records} == {"ED", "ES"}
    sub = acdc_datalist(acdc, val_fraction=0.34, test_fraction=0.33, max_patients_per_group=3)
    assert sum(len(v) for v in sub.values()) == 30


def test_acdc_spacing_comes_from_header_zooms(acdc):
    path = next((acdc / "training" / "patient001").glob("*_frame01.nii.gz"))
    raw = nib.load(path)
    assert np.allclose(raw.affine[:3, :3], np.diag([-1, -1, 1]))  # the release's quirk
    zooms = raw.header.get_zooms()
    d = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": str(path)})
    # whatever the reader made of the affine, the transform leaves it with the header zooms
    d["image"].affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    out = AffineFromZoomsd("image")(d)["image"]
    assert np.allclose(out.affine[:3, :3].numpy(), np.diag([-zooms[0], -zooms[1], zooms[2]]))
    again = AffineFromZoomsd("image")({"image": out})["image"]
    assert torch.equal(again.affine, out.affine)


def test_acdc_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_acdc_cases(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no ACDC patient"):
        find_acdc_cases(tmp_path)


def test_msd_datalist_and_folder_listing(tmp_path):
    root = write_synthetic_msd_hippocampus(tmp_path / "Task04_Hippocampus", n_training=10, n_test=2, shape=(8, 10, 8))
    (root / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"junk")  # macOS resource fork
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/._hippocampus_001.nii.gz", "label": "./labelsTr/._x.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    parts = msd_datalist(root, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert [len(parts[k]) for k in ("training", "validation", "test")] == [6, 2, 2]
    images = [r["image"] for p in parts.values() for r in p]
    assert len(set(images)) == 10 and not any("._" in i for i in images)
    assert len(nifti_folder_datalist(root / "imagesTs")) == 2
    assert len(nifti_folder_datalist(root / "imagesTr")) == 10
    meta["training"].append({"image": "./imagesTr/missing.nii.gz", "label": "./labelsTr/missing.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        msd_datalist(root)


def _write_busi_seg(root, n=4):
    """BUSI-layout folders with non-square images and, for some, two mask files."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            img = (rng.random((20, 28)) * 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            m = np.zeros((20, 28), np.uint8)
            if cls != "normal":
                m[2:6, 3:9] = 255
            Image.fromarray(m).save(root / cls / f"{cls} ({i})_mask.png")
            if i == 2 and cls != "normal":
                m2 = np.zeros_like(m)
                m2[10:15, 20:25] = 255
                Image.fromarray(m2).save(root / cls / f"{cls} ({i})_mask_1.png")
    # the release stores one image twice, under two classes
    (root / "malignant" / f"malignant ({n + 1}).png").write_bytes((root / "benign" / "benign (1).png").read_bytes())
    (root / "malignant" / f"malignant ({n + 1})_mask.png").write_bytes((root / "benign" / "benign (1)_mask.png").read_bytes())
    return root


def test_busi_segmentation_datalist_and_mask_union(tmp_path):
    root = _write_busi_seg(tmp_path / "busi")
    parts = busi_segmentation_datalist(root, val_fraction=0.25, test_fraction=0.25, seed=0)
    records = [r for p in parts.values() for r in p]
    assert len(records) == 8  # normal excluded, the duplicate kept once
    assert {r["class_name"] for r in records} == {"benign", "malignant"}
    two = next(r for r in records if r["image"].endswith("benign (2).png"))
    assert len(two["masks"]) == 2
    d = LoadImaged("image", image_only=True, ensure_channel_first=True)({"image": two["image"], "masks": two["masks"]})
    d = LoadUnionMaskd("masks", "label")(d)
    assert "masks" not in d
    label = d["label"]
    assert label.shape == d["image"].shape and label.dtype == torch.uint8
    assert int(label.sum()) == 4 * 6 + 5 * 5  # both lesions
    with_normal = busi_segmentation_datalist(root, classes=("benign", "malignant", "normal"), val_fraction=0.25, test_fraction=0.25)
    assert sum(len(v) for v in with_normal.values()) == 12
    empty = LoadUnionMaskd("masks", "label")({"image": d["image"], "masks": []})["label"]
    assert empty.shape == d["image"].shape and int(empty.sum()) == 0
    with pytest.raises(ValueError, match="unknown BUSI classes"):
        busi_segmentation_datalist(root, classes=("cyst",))


def test_valid_region_mask_marks_image_before_padding():
    from monai.transforms import SpatialPadd

    img = MetaTensor(torch.rand(1, 5, 7))
    d = ValidRegiond("image", "mask")({"image": img})
    d = SpatialPadd(["image", "mask"], (8, 8))(d)
    assert d["mask"].shape == (1, 8, 8) and float(d["mask"].sum()) == 35.0


def _brute_hd95(a, b, spacing):
    sa = torch.nonzero(surface_voxels(a)).double() * torch.tensor(spacing)
    sb = torch.nonzero(surface_voxels(b)).double() * torch.tensor(spacing)
    d = torch.cdist(sa, sb)
    return max(torch.quantile(d.amin(1), 0.95), torch.quantile(d.amin(0), 0.95)).item()


def test_hd95_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(14, 16, 10, dtype=torch.bool)
    b = torch.zeros_like(a)
    a[3:10, 4:12, 2:8] = True
    b[4:12, 3:11, 3:9] = True
    b &= torch.rand(b.shape, generator=g) > 0.1
    for spacing in ((1.0, 1.0, 1.0), (0.7, 0.7, 5.0)):
        assert hausdorff_distance_95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing), rel=1e-5)
    assert hausdorff_distance_95(a, a) == 0.0
    assert math.isnan(hausdorff_distance_95(a, torch.zeros_like(a)))
    assert hausdorff_distance_95(torch.zeros_like(a), a) > 20  # empty prediction: worst case
    # surface of a solid box: its faces only
    assert int(surface_voxels(torch.ones(3, 3, 3, dtype=torch.bool)).sum()) == 26


def test_hd95_metric_reads_spacing_from_the_affine():
    a = torch.zeros(1, 2, 10, 10, 10)
    a[0, 1, 2:6, 2:6, 2:6] = 1
    a[0, 0] = 1 - a[0, 1]
    b = torch.roll(a, 1, dims=4)
    pred = MetaTensor(a, affine=torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0])))
    metric = HausdorffDistance95Metric(spacing="auto")
    metric(pred, b)
    assert float(metric.aggregate()) == pytest.approx(3.0)
    metric = HausdorffDistance95Metric(spacing=None)
    metric(pred, b)
    assert float(metric.aggregate()) == pytest.approx(1.0)


def test_select_channels_gives_one_structure():
    out = [{"pred": torch.rand(4, 3, 3), "label": torch.rand(4, 3, 3)} for _ in range(2)]
    preds, labels = SelectChannels(2)(out)
    assert len(preds) == 2 and preds[0].shape == (2, 3, 3)
    assert torch.equal(preds[0][1], out[0]["pred"][2]) and torch.equal(labels[1][0], out[1]["label"][0])


def test_ejection_fraction_error_handler():
    assert ejection_fraction(100.0, 40.0) == pytest.approx(60.0)
    engine = Engine(lambda e, b: None)
    handler = EjectionFractionError(prefix="val_")
    handler.attach(engine)

    def seg(lv, rv):
        t = torch.zeros(1, 10, 10, 2)
        t.view(-1)[:lv] = 3
        t.view(-1)[lv : lv + rv] = 1
        return MetaTensor(t, affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))

    batches = [
        ({"patient": "p1", "phase": "ED"}, {"pred": seg(50, 40), "label": seg(50, 40)}),
        ({"patient": "p1", "phase": "ES"}, {"pred": seg(25, 20), "label": seg(20, 20)}),
        ({"patient": "p2", "phase": "ED"}, {"pred": seg(10, 10), "label": seg(10, 10)}),  # no ES: ignored
    ]

    engine.state.metrics = {}
    handler._reset(engine)
    for item, out in batches:
        engine.state.batch, engine.state.output = [item], [out]
        handler._collect(engine)
    handler._compute(engine)
    assert engine.state.metrics["val_lv_ef_mae"] == pytest.approx(10.0)  # 50% vs 60%
    assert engine.state.metrics["val_rv_ef_mae"] == pytest.approx(0.0)
    rows = handler.results()
    assert len(rows) == 1 and rows[0]["ref_lv_edv_ml"] == pytest.approx(50 * 20 / 1000)
