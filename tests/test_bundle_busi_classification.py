"""busi_ultrasound_classification: train, evaluate, infer and export on tiny data in BUSI's layout."""

import csv
import json
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

from drd_components.bundle import validate_metadata
from drd_components.data import busi_classification_datalist
from drd_components.data.synthetic import write_synthetic_busi
from tests.bundle_utils import BUNDLES, run_bundle, write_standin_teacher

BUNDLE = "busi_ultrasound_classification"
ROOT = BUNDLES / BUNDLE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One DRD epoch on 10 synthetic images per class (stand-in teacher), then evaluation."""
    tmp = tmp_path_factory.mktemp("busi_cls")
    data = write_synthetic_busi(tmp / "busi", n_per_class=10, size=48, seed=1)
    teacher = write_standin_teacher(tmp / "teacher.pt", block_inplanes=(32, 64, 128, 256))
    common = {"dataset_dir": str(data), "output_dir": str(tmp / "out"), "image_size": [48, 48], "num_workers": 0}
    train = run_bundle(
        BUNDLE,
        ["train.json", "teacher_standin.json"],
        dict(common, teacher_checkpoint=str(teacher), num_epochs=1, batch_size=4),
        run_id="training",
    )
    evaluate = run_bundle(BUNDLE, ["train.json", "evaluate.json"], common)
    return {"tmp": tmp, "data": data, "teacher": teacher, "common": common, "train_log": train.stdout + train.stderr,
            "eval_log": evaluate.stdout + evaluate.stderr}


def test_training_logs_every_term_and_saves_student(trained):
    log = trained["train_log"]
    for key in ("loss_task", "loss_hybrid", "loss_kl", "loss_cka", "cka_stage0", "val_accuracy"):
        assert key in log, f"'{key}' missing from the training log"
    out = trained["tmp"] / "out"
    state = torch.load(out / "model.pt", weights_only=True)
    # the best-metric checkpoint holds the student alone (no projector / teacher keys)
    assert all(k.startswith(("stages.", "pool.", "dropout.", "fc.")) for k in state)
    resume = torch.load(next(out.glob("resume_checkpoint_epoch=*.pt")), weights_only=True)
    assert {"model", "projectors", "optimizer", "lr_scheduler"} <= set(resume)
    split = json.loads((out / "datalist.json").read_text())
    assert len(split["training"]) + len(split["validation"]) + len(split["test"]) == 30


def test_evaluation_writes_test_metrics(trained):
    metrics = (trained["tmp"] / "out" / "eval" / "metrics.csv").read_text()
    assert "test_accuracy" in metrics
    acc = float(next(line.split(",")[1] for line in metrics.splitlines() if line.startswith("test_accuracy")))
    assert 0.0 <= acc <= 1.0


def test_inference_writes_predictions_for_a_folder(trained):
    out = trained["tmp"] / "pred"
    run_bundle(
        BUNDLE,
        ["inference.json"],
        {"dataset_dir": str(trained["data"] / "malignant"), "output_dir": str(out),
         "ckpt_path": str(trained["tmp"] / "out" / "model.pt"), "image_size": [48, 48], "num_workers": 0},
    )
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 10  # masks are not images
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("benign", "malignant", "normal")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted_class"] in ("benign", "malignant", "normal")


def test_torchscript_export_matches_eager(trained, tmp_path):
    import subprocess

    ts = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
           "--ckpt_file", str(trained["tmp"] / "out" / "model.pt"), "--meta_file", "configs/metadata.json",
           "--config_file", "configs/inference.json", "--bundle_root", str(ROOT)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    scripted = torch.jit.load(str(ts))
    wf = ConfigWorkflow(config_file=str(ROOT / "configs/inference.json"), workflow_type="infer",
                        bundle_root=str(ROOT), device="$torch.device('cpu')")
    wf.initialize()
    net = wf.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained["tmp"] / "out" / "model.pt", weights_only=True))
    net.eval()
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


def test_verify_net_in_out():
    import subprocess

    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
           "configs/metadata.json", "--config_file", "configs/inference.json", "--bundle_root", str(ROOT)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_metadata_valid():
    meta = validate_metadata(ROOT / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3


def test_metadata_validation_catches_missing_fields(tmp_path):
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        validate_metadata(bad)


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(trained, workflow_type):
    common = trained["common"]
    if workflow_type == "train":
        files = [str(ROOT / "configs/train.json"), str(ROOT / "configs/teacher_standin.json")]
        extra = {"teacher_checkpoint": str(trained["teacher"])}
    else:
        files, extra = str(ROOT / "configs/inference.json"), {}
    wf = ConfigWorkflow(config_file=files, meta_file=str(ROOT / "configs/metadata.json"), workflow_type=workflow_type,
                        bundle_root=str(ROOT), **common, **extra)
    wf.initialize()
    assert wf.check_properties() in (None, [])


def test_datalist_is_deterministic_and_stratified(tmp_path):
    data = write_synthetic_busi(tmp_path / "busi", n_per_class=20, size=16, seed=0)
    a = busi_classification_datalist(data, seed=3)
    b = busi_classification_datalist(data, seed=3)
    c = busi_classification_datalist(data, seed=4)
    assert a == b and a != c
    for part, n in (("training", 14), ("validation", 3), ("test", 3)):
        labels = [r["label"] for r in a[part]]
        assert [labels.count(k) for k in range(3)] == [n, n, n]
    all_images = [r["image"] for p in a.values() for r in p]
    assert len(all_images) == len(set(all_images)) == 60
    assert not any("_mask" in p for p in all_images)


def test_missing_dataset_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        busi_classification_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no BUSI images"):
        busi_classification_datalist(tmp_path / "empty")


@pytest.mark.parametrize(
    "overlay,expect,absent",
    [
        ("train_vanilla.json", "train_accuracy", "loss_cka"),  # plain SupervisedTrainer, no teacher
        ("train_rd.json", "cka_stage3", "cka_stage0"),  # RD: one projector at the last stage
    ],
)
def test_baseline_overlays_train(trained, tmp_path, overlay, expect, absent):
    common = dict(trained["common"], output_dir=str(tmp_path / "out"))
    proc = run_bundle(
        BUNDLE,
        ["train.json", "teacher_standin.json", overlay],
        dict(common, teacher_checkpoint=str(trained["teacher"]), num_epochs=1, batch_size=4),
        run_id="training",
    )
    log = proc.stdout + proc.stderr
    assert expect in log and absent not in log
    assert (tmp_path / "out" / "model.pt").is_file()


def test_multi_gpu_config_trains_with_two_cpu_processes(trained, tmp_path):
    """torchrun with 2 processes (gloo on CPU): one loadable student checkpoint, written by rank 0."""
    import os
    import subprocess

    out = tmp_path / "out"
    files = "['configs/train.json','configs/teacher_standin.json','configs/multi_gpu_train.json']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "monai.bundle", "run", "training", "--config_file", files, "--bundle_root", str(ROOT),
           "--dataset_dir", str(trained["data"]), "--output_dir", str(out), "--image_size", "[48, 48]",
           "--num_workers", "0", "--num_epochs", "1", "--batch_size", "4",
           "--teacher_checkpoint", str(trained["teacher"])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoints = sorted(p.name for p in out.glob("*.pt"))
    assert checkpoints == ["model.pt", "resume_checkpoint_epoch=1.pt"]
    state = torch.load(out / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved without the DDP wrapper
