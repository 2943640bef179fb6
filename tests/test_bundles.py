"""Every bundle of the collection: train, evaluate, infer, export and check on tiny data in its dataset's layout.

Each bundle trains one DRD epoch with a small random stand-in teacher (``teacher_standin.json``)
on a generated copy of its dataset's official on-disk layout (``tests/fake_datasets*.py``), then
evaluates the best checkpoint on the test split, runs ``inference.json`` on new inputs (PNG for
2D, NIfTI for 3D), exports the student to TorchScript and checks MONAI's bundle properties. The
networks are shrunk through config overrides only, exactly as a user would.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out
from PIL import Image

from drd_components.bundle import validate_metadata
from tests.bundle_utils import BUNDLES, write_standin_teacher
from tools.bundle_specs import BUNDLES as SPECS
from tools.bundle_specs import BundleSpec

TINY_TEACHER = {"teacher_def#block_inplanes": [8, 8, 16, 16]}
#: per family: the smallest sizes that keep every student's stages meaningful
TINY = {
    ("classification", 2): {"image_size": [32, 32], "batch_size": 4},
    ("classification", 3): {"image_size": [16, 16, 16], "batch_size": 2},
    ("segmentation", 2): {"image_size": [32, 32], "batch_size": 2},
    ("segmentation", 3): {"patch_size": [16, 16, 16], "unet_channels": [8, 16, 16], "batch_size": 2, "samples_per_volume": 1,
                          "sw_batch_size": 2},
}
ANISOTROPIC = {"patch_size": [16, 16, 8], "unet_strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2]],
               "unet_kernels": [[3, 3, 1], [3, 3, 1], [3, 3, 3]]}
VIT_TINY = {"network_def#patch_size": 8, "network_def#embed_dim": 32, "network_def#depth": 4, "network_def#num_heads": 2,
            "network_def#decoder_channels": 16}


def tiny_overrides(spec: BundleSpec, train_ids: dict) -> dict:
    """Config overrides that shrink one bundle's student, data and loader for a smoke run."""
    out = dict(TINY[(spec.task, spec.spatial_dims)], num_workers=0)
    if spec.extras.get("anisotropic"):
        out.update(ANISOTROPIC)
    if "vit_segmenter" in spec.student["_target_"]:
        out.update(VIT_TINY)
    if spec.spacing is not None:
        out["spacing"] = [2.0, 2.0, 2.0] if not spec.extras.get("anisotropic") else [3.0, 3.0, 10.0]
    for key in ("val_fraction", "test_fraction"):
        if key in train_ids:  # ACDC splits per pathology group (3 patients each here): one for validation, one for test
            out[key] = 0.34 if "max_patients_per_group" in train_ids else 0.25
    if "verify_md5" in train_ids:
        out["verify_md5"] = False  # generated npz files cannot match the official MD5
    return out


def write_dataset(spec: BundleSpec, root):
    """A tiny copy of the bundle's dataset in its official layout; returns the ``dataset_dir``."""
    key = spec.dataset.key
    if spec.dataset.module == "drd_components.data.busi" or spec.dataset.module == "drd_components.data.busi_segmentation":
        from drd_components.data.synthetic import write_synthetic_busi

        return write_synthetic_busi(root / "busi", n_per_class=6, size=40, seed=1)
    if key == "acdc":
        from drd_components.data.acdc import write_synthetic_acdc

        return write_synthetic_acdc(root / "ACDC", patients_per_group=3, shape=(24, 28, 5), seed=3)
    if key == "msd_hippocampus":
        from drd_components.data.msd import write_synthetic_msd_hippocampus

        return write_synthetic_msd_hippocampus(root / "Task04_Hippocampus", n_training=8, n_test=2, shape=(14, 18, 14), seed=2)
    if spec.spatial_dims == 3 and key not in ("nodulemnist3d", "vesselmnist3d"):
        from tests.fake_datasets_3d import FAKE_DATASETS_3D

        return FAKE_DATASETS_3D[key](root)
    from tests.fake_datasets import FAKE_DATASETS

    return FAKE_DATASETS[key](root)


def run_workflow(bundle: str, configs: list[str], workflow_type: str | None = None, **overrides) -> ConfigWorkflow:
    """Run a bundle workflow in this process the way ``python -m monai.bundle run`` does."""
    root = BUNDLES / bundle
    wf = ConfigWorkflow(config_file=[str(root / "configs" / c) for c in configs], meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=False, workflow_type=workflow_type, bundle_root=str(root), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def write_inference_inputs(spec: BundleSpec, folder, n: int = 2):
    """New, unlabelled inputs of the kind clinicians have: PNG (2D) or NIfTI with an oblique affine (3D)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = []
    for i in range(n):
        if spec.spatial_dims == 2:
            shape = (37 + 3 * i, 29)
            arr = rng.integers(0, 255, size=shape + ((3,) if spec.in_channels == 3 else ()), dtype=np.uint8)
            Image.fromarray(arr).save(folder / f"case{i}.png")
        else:
            shape = (20 + 2 * i, 18, 12) + ((spec.in_channels,) if spec.in_channels > 1 else ())
            affine = np.diag([1.5, 1.2, 2.5, 1.0])
            affine[:3, :3] = affine[:3, :3] @ np.array([[0.96, -0.28, 0], [0.28, 0.96, 0], [0, 0, 1]]) if i == 1 else affine[:3, :3]
            nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine), folder / f"case{i}.nii.gz")
        shapes.append(shape)
    return shapes


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_metadata_is_valid_and_matches_the_spec(spec):
    meta = validate_metadata(BUNDLES / spec.name / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(spec.class_names)
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == spec.in_channels
    assert meta["version"] in meta["changelog"]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_verify_net_in_out(spec):
    """MONAI's check of the deployed student against metadata's network_data_format (full size)."""
    root = BUNDLES / spec.name
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "inference.json"), bundle_root=str(root), device="cpu")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_bundle_trains_evaluates_infers_and_exports(spec, tmp_path):
    root = BUNDLES / spec.name
    train_ids = json.loads((root / "configs" / "train.json").read_text())
    tiny = tiny_overrides(spec, train_ids)
    data = write_dataset(spec, tmp_path / "data")
    teacher = write_standin_teacher(tmp_path / "teacher.pt", spatial_dims=spec.spatial_dims, in_channels=spec.in_channels,
                                    block_inplanes=(8, 8, 16, 16))
    out = tmp_path / "out"
    common = dict(tiny, dataset_dir=str(data), output_dir=str(out))

    # MONAI's required properties of a train workflow
    wf = ConfigWorkflow(config_file=[str(root / "configs" / c) for c in ("train.json", "teacher_standin.json")],
                        meta_file=str(root / "configs" / "metadata.json"), workflow_type="train", bundle_root=str(root),
                        logging_file=False, **common, **TINY_TEACHER, teacher_checkpoint=str(teacher))
    wf.initialize()
    assert wf.check_properties() in (None, [])

    # one DRD epoch with validation
    wf = run_workflow(spec.name, ["train.json", "teacher_standin.json"], **common, **TINY_TEACHER,
                      teacher_checkpoint=str(teacher), num_epochs=1, val_interval=1)
    trainer = wf.parser.get_parsed_content("train#trainer")
    terms = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
    for key in ("loss", "loss_task", "loss_hybrid", "loss_kl", "loss_cka"):
        assert torch.isfinite(torch.as_tensor(terms[key])).all(), key
    key_metric = "val_accuracy" if spec.task == "classification" else "val_mean_dice"
    val_metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= val_metrics[key_metric] <= 1.0
    for short in spec.short_names if len(spec.class_names) > 2 else ():
        assert f"val_dice_{short}" in val_metrics
    student = torch.load(out / "model.pt", weights_only=True)
    net = wf.parser.get_parsed_content("network_def", instantiate=True)
    assert set(student) == set(net.state_dict())  # the student alone: no teacher, no projectors
    resume = torch.load(next(out.glob("resume_checkpoint_epoch=*.pt")), weights_only=True)
    assert {"model", "projectors", "optimizer", "lr_scheduler", "trainer", "validation"} <= set(resume)
    curves = json.loads((out / "training_curves.json").read_text())  # written next to the checkpoint with the PNG
    assert (out / "training_curves.png").stat().st_size > 0 and "loss_cka" in json.dumps(curves)

    # evaluation of the best checkpoint on the test split
    run_workflow(spec.name, ["train.json", "evaluate.json"], **common)
    metrics = dict(line.split(",")[:2] for line in (out / "eval" / "metrics.csv").read_text().splitlines())
    test_key = "test_accuracy" if spec.task == "classification" else "test_mean_dice"
    assert 0.0 <= float(metrics[test_key]) <= 1.0
    if spec.extras.get("ejection_fraction"):
        assert "test_lv_ef_mae" in metrics

    # inference on new inputs, with a run report
    inputs, pred_dir = tmp_path / "new_cases", tmp_path / "pred"
    shapes = write_inference_inputs(spec, inputs)
    infer_ids = {k: v for k, v in tiny.items() if k != "batch_size" and (
        k in json.loads((root / "configs" / "inference.json").read_text()) or k.startswith("network_def#"))}
    run_workflow(spec.name, ["inference.json"], dataset_dir=str(inputs), output_dir=str(pred_dir), ckpt_path=str(out / "model.pt"),
                 **infer_ids)
    with open(pred_dir / "run_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(shapes)
    if spec.task == "classification":
        with open(pred_dir / "predictions.csv", newline="") as f:
            preds = list(csv.DictReader(f))
        assert len(preds) == len(shapes) and {p["predicted_class"] for p in preds} <= set(spec.class_names)
    elif spec.spatial_dims == 2:
        for i, shape in enumerate(shapes):
            seg = np.asarray(Image.open(pred_dir / f"case{i}_seg.png"))
            assert seg.shape[:2] == shape[:2] and set(np.unique(seg)) <= {0, 255}
    else:
        for i, shape in enumerate(shapes):
            src, seg = nib.load(inputs / f"case{i}.nii.gz"), nib.load(pred_dir / f"case{i}_seg.nii.gz")
            assert seg.shape[:3] == shape[:3]
            np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)  # written in the input's space
            assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(len(spec.class_names)))

    # TorchScript export of the student matches eager mode
    net_overrides = {k: v for k, v in infer_ids.items() if k.startswith(("network_def#", "unet_", "image_size", "patch_size"))}
    ts = tmp_path / "model.ts"
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(out / "model.pt"), meta_file=str(root / "configs" / "metadata.json"),
                config_file=str(root / "configs" / "inference.json"), bundle_root=str(root), **net_overrides)
    scripted = torch.jit.load(str(ts))
    net.load_state_dict(student)
    net.eval()
    size = tiny.get("patch_size", tiny.get("image_size"))
    x = torch.rand(1, spec.in_channels, *size)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)

    # MONAI's required properties of an inference workflow
    wf = ConfigWorkflow(config_file=str(root / "configs" / "inference.json"), workflow_type="infer", bundle_root=str(root),
                        logging_file=False, dataset_dir=str(inputs), **infer_ids)
    wf.initialize()
    assert wf.check_properties() in (None, [])
