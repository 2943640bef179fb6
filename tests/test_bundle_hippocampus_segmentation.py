"""hippocampus_mri_segmentation: train, evaluate, infer and export on tiny generated volumes in the MSD layout.

There is no real copy of MSD Task04 in this workspace; the generated task has MSD's dataset.json,
folder layout and realistic (flipped, shifted, partly oblique) affines.
"""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export

from drd_components.bundle import validate_metadata
from drd_components.data.msd import write_synthetic_msd_hippocampus
from tests.bundle_utils import BUNDLES, run_bundle, write_standin_teacher

BUNDLE = "hippocampus_mri_segmentation"
ROOT = BUNDLES / BUNDLE
#: a 3-level UNet on 16^3 patches keeps the smoke runs small
NET = {"unet_channels": [8, 16, 16], "patch_size": [16, 16, 16], "num_workers": 0, "sw_batch_size": 2}
TEACHER = {"teacher_def#block_inplanes": [8, 8, 16, 16]}


def run_in_process(configs, **overrides):
    """Run a bundle workflow the way ``python -m monai.bundle run`` does, in this process (saves the
    interpreter start-up of a subprocess; training itself is tested through the CLI)."""
    wf = ConfigWorkflow(config_file=[str(ROOT / "configs" / c) for c in configs], meta_file=str(ROOT / "configs/metadata.json"),
                        logging_file=False, workflow_type=None, bundle_root=str(ROOT), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One DRD epoch (stand-in teacher) with validation, then evaluation on the test part."""
    tmp = tmp_path_factory.mktemp("hippo")
    data = write_synthetic_msd_hippocampus(tmp / "Task04_Hippocampus", n_training=10, n_test=2, shape=(14, 18, 14), seed=2)
    teacher = write_standin_teacher(tmp / "teacher.pt", spatial_dims=3, block_inplanes=(8, 8, 16, 16))
    common = dict(NET, dataset_dir=str(data), output_dir=str(tmp / "out"), val_fraction=0.2, test_fraction=0.2)
    train = run_bundle(
        BUNDLE,
        ["train.json", "teacher_standin.json"],
        dict(common, **TEACHER, teacher_checkpoint=str(teacher), num_epochs=1, val_interval=1, batch_size=2, samples_per_volume=1),
        run_id="training",
    )
    run_in_process(["train.json", "evaluate.json"], **common)
    return {"tmp": tmp, "data": data, "teacher": teacher, "common": common, "train_log": train.stdout + train.stderr}


def test_training_logs_drd_terms_and_per_structure_metrics(trained):
    log = trained["train_log"]
    for key in ("loss_task", "loss_hybrid", "loss_kl", "loss_cka", "cka_stage2", "val_mean_dice", "val_dice_anterior",
                "val_dice_posterior", "val_hd95", "Epoch 1 time"):
        assert key in log, f"'{key}' missing from the training log"
    out = trained["tmp"] / "out"
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(k.startswith(("stages.", "up_blocks.", "out_block.")) for k in state)  # the student alone
    resume = torch.load(next(out.glob("resume_checkpoint_epoch=*.pt")), weights_only=True)
    assert {"model", "projectors", "optimizer", "lr_scheduler"} <= set(resume)


def test_evaluation_reports_dice_per_structure_and_hd95(trained):
    metrics = dict(line.split(",") for line in (trained["tmp"] / "out" / "eval" / "metrics.csv").read_text().splitlines())
    for key in ("test_mean_dice", "test_dice_anterior", "test_dice_posterior"):
        assert 0.0 <= float(metrics[key]) <= 1.0
    assert float(metrics["test_hd95"]) >= 0.0
    details = (trained["tmp"] / "out" / "eval" / "test_mean_dice_raw.csv").read_text().splitlines()
    assert len(details) == 1 + 2  # header + the two test cases


def test_inference_writes_nifti_with_the_inputs_affine_and_shape(trained):
    out = trained["tmp"] / "pred"
    run_in_process(["inference.json"], **NET, dataset_dir=str(trained["data"] / "imagesTs"), output_dir=str(out),
                   ckpt_path=str(trained["tmp"] / "out" / "model.pt"))
    written = sorted(out.glob("*_seg.nii.gz"))
    assert len(written) == 2
    oblique = 0
    for f in written:
        src = nib.load(trained["data"] / "imagesTs" / f.name.replace("_seg", ""))
        seg = nib.load(f)
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        oblique += not np.allclose(np.abs(src.affine[:3, :3]), np.eye(3))
    assert oblique >= 1  # one of the inputs is oblique


def test_torchscript_export_matches_eager(trained, tmp_path):
    ts = tmp_path / "model.ts"
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(trained["tmp"] / "out" / "model.pt"),
                meta_file=str(ROOT / "configs/metadata.json"), config_file=str(ROOT / "configs/inference.json"),
                bundle_root=str(ROOT), unet_channels=[8, 16, 16])
    scripted = torch.jit.load(str(ts))
    wf = ConfigWorkflow(config_file=str(ROOT / "configs/inference.json"), workflow_type="infer", bundle_root=str(ROOT),
                        device="$torch.device('cpu')", unet_channels=[8, 16, 16])
    wf.initialize()
    net = wf.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained["tmp"] / "out" / "model.pt", weights_only=True))
    net.eval()
    x = torch.randn(1, 1, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


def test_metadata_valid():
    meta = validate_metadata(ROOT / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(trained, workflow_type):
    if workflow_type == "train":
        files = [str(ROOT / "configs/train.json"), str(ROOT / "configs/teacher_standin.json")]
        extra = dict(trained["common"], **TEACHER, teacher_checkpoint=str(trained["teacher"]))
    else:
        files, extra = str(ROOT / "configs/inference.json"), dict(NET, dataset_dir=str(trained["data"] / "imagesTs"))
    wf = ConfigWorkflow(config_file=files, meta_file=str(ROOT / "configs/metadata.json"), workflow_type=workflow_type,
                        bundle_root=str(ROOT), **extra)
    wf.initialize()
    assert wf.check_properties() in (None, [])
