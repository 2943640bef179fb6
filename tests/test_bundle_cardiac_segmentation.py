"""cardiac_mri_segmentation: train, evaluate, infer and export on tiny data in ACDC's release layout."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export

from drd_components.bundle import validate_metadata
from drd_components.data.acdc import write_synthetic_acdc
from tests.bundle_utils import BUNDLES, run_bundle, write_standin_teacher

BUNDLE = "cardiac_mri_segmentation"
ROOT = BUNDLES / BUNDLE
#: a 3-level anisotropic UNet on 16x16x4 patches at 3 x 3 x 10 mm keeps the smoke runs small
NET = {"unet_channels": [8, 16, 16], "unet_strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2]],
       "unet_kernels": [[3, 3, 1], [3, 3, 1], [3, 3, 3]], "patch_size": [16, 16, 4], "spacing": [3.0, 3.0, 10.0],
       "num_workers": 0, "sw_batch_size": 2}
TEACHER = {"teacher_def#block_inplanes": [8, 8, 16, 16]}


def run_in_process(configs, **overrides):
    """Run a bundle workflow as ``python -m monai.bundle run`` does, in this process."""
    wf = ConfigWorkflow(config_file=[str(ROOT / "configs" / c) for c in configs], meta_file=str(ROOT / "configs/metadata.json"),
                        logging_file=False, workflow_type=None, bundle_root=str(ROOT), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acdc")
    data = write_synthetic_acdc(tmp / "ACDC", patients_per_group=3, shape=(24, 28, 5), seed=3)
    teacher = write_standin_teacher(tmp / "teacher.pt", spatial_dims=3, block_inplanes=(8, 8, 16, 16))
    common = dict(NET, dataset_dir=str(data), output_dir=str(tmp / "out"), val_fraction=0.34, test_fraction=0.33)
    train = run_bundle(
        BUNDLE,
        ["train.json", "teacher_standin.json"],
        dict(common, **TEACHER, teacher_checkpoint=str(teacher), num_epochs=1, val_interval=1, batch_size=5,
             samples_per_volume=1),
        run_id="training",
    )
    run_in_process(["train.json", "evaluate.json"], **common)
    return {"tmp": tmp, "data": data, "teacher": teacher, "common": common, "train_log": train.stdout + train.stderr}


def test_training_logs_terms_dice_per_structure_and_ef_error(trained):
    log = trained["train_log"]
    for key in ("loss_task", "loss_hybrid", "loss_kl", "loss_cka", "cka_stage2", "val_mean_dice", "val_dice_rv",
                "val_dice_myo", "val_dice_lv", "val_lv_ef_mae", "val_rv_ef_mae"):
        assert key in log, f"'{key}' missing from the training log"
    split = json.loads((trained["tmp"] / "out" / "datalist.json").read_text())
    for part in ("training", "validation", "test"):
        groups = sorted(r["group"] for r in split[part] if r["phase"] == "ED")
        assert groups == ["DCM", "HCM", "MINF", "NOR", "RV"], part  # stratified by pathology group


def test_evaluation_reports_dice_hd95_and_ejection_fraction_error(trained):
    eval_dir = trained["tmp"] / "out" / "eval"
    metrics = dict(line.split(",") for line in (eval_dir / "metrics.csv").read_text().splitlines())
    for key in ("test_mean_dice", "test_dice_rv", "test_dice_myo", "test_dice_lv"):
        assert 0.0 <= float(metrics[key]) <= 1.0
    for key in ("test_hd95", "test_lv_ef_mae", "test_rv_ef_mae"):
        assert key in metrics
    rows = list(csv.DictReader(open(eval_dir / "ejection_fraction.csv")))
    assert len(rows) == 5  # one per test patient
    for r in rows:
        # reference EF from the original-resolution labels, as the generator made them (DCM 20 %, others 30-60 %)
        assert 5.0 < float(r["ref_lv_ef"]) < 80.0
        assert float(r["ref_lv_edv_ml"]) > float(r["ref_lv_esv_ml"])


def test_inference_keeps_shape_and_header_spacing(trained):
    frames = trained["tmp"] / "frames"
    frames.mkdir()
    src_dir = trained["data"] / "training" / "patient005"
    for f in src_dir.glob("*.nii.gz"):
        (frames / f.name).write_bytes(f.read_bytes())
    out = trained["tmp"] / "pred"
    run_in_process(["inference.json"], **NET, dataset_dir=str(frames), output_dir=str(out),
                   ckpt_path=str(trained["tmp"] / "out" / "model.pt"))
    written = sorted(out.glob("*_seg.nii.gz"))
    assert len(written) == 2  # the _gt files are not inputs
    for f in written:
        src = nib.load(frames / f.name.replace("_seg", ""))
        seg = nib.load(f)
        assert seg.shape == src.shape
        zooms = np.array(src.header.get_zooms())
        np.testing.assert_allclose(seg.header.get_zooms(), zooms, rtol=1e-5)
        # the input's orientation and origin, with the header spacing written into the affine
        np.testing.assert_allclose(seg.affine[:3, :3], src.affine[:3, :3] @ np.diag(zooms), atol=1e-4)
        np.testing.assert_allclose(seg.affine[:3, 3], src.affine[:3, 3], atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


def test_torchscript_export_matches_eager(trained, tmp_path):
    ts = tmp_path / "model.ts"
    overrides = {k: NET[k] for k in ("unet_channels", "unet_strides", "unet_kernels")}
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(trained["tmp"] / "out" / "model.pt"),
                meta_file=str(ROOT / "configs/metadata.json"), config_file=str(ROOT / "configs/inference.json"),
                bundle_root=str(ROOT), **overrides)
    scripted = torch.jit.load(str(ts))
    wf = ConfigWorkflow(config_file=str(ROOT / "configs/inference.json"), workflow_type="infer", bundle_root=str(ROOT),
                        device="$torch.device('cpu')", **overrides)
    wf.initialize()
    net = wf.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained["tmp"] / "out" / "model.pt", weights_only=True))
    net.eval()
    x = torch.randn(1, 1, 16, 24, 8)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


def test_metadata_valid():
    meta = validate_metadata(ROOT / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(trained, workflow_type):
    if workflow_type == "train":
        files = [str(ROOT / "configs/train.json"), str(ROOT / "configs/teacher_standin.json")]
        extra = dict(trained["common"], **TEACHER, teacher_checkpoint=str(trained["teacher"]))
    else:
        files, extra = str(ROOT / "configs/inference.json"), dict(NET, dataset_dir=str(trained["data"]))
    wf = ConfigWorkflow(config_file=files, meta_file=str(ROOT / "configs/metadata.json"), workflow_type=workflow_type,
                        bundle_root=str(ROOT), **extra)
    wf.initialize()
    assert wf.check_properties() in (None, [])
