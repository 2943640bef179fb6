"""busi_ultrasound_segmentation: train, evaluate, infer and export on tiny data in BUSI's layout."""

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export
from PIL import Image

from drd_components.bundle import validate_metadata
from drd_components.data.synthetic import synthetic_ultrasound
from tests.bundle_utils import BUNDLES, run_bundle, write_standin_teacher

BUNDLE = "busi_ultrasound_segmentation"
ROOT = BUNDLES / BUNDLE
#: a 4-block ViT with 8x8 patches on 32x32 inputs keeps the smoke runs small
NET = {"image_size": [32, 32], "network_def#patch_size": 8, "network_def#embed_dim": 32, "network_def#depth": 4,
       "network_def#num_heads": 2, "network_def#decoder_channels": 16, "num_workers": 0}
TEACHER = {"teacher_def#block_inplanes": [8, 8, 16, 16]}


def run_in_process(configs, **overrides):
    """Run a bundle workflow as ``python -m monai.bundle run`` does, in this process."""
    wf = ConfigWorkflow(config_file=[str(ROOT / "configs" / c) for c in configs], meta_file=str(ROOT / "configs/metadata.json"),
                        logging_file=False, workflow_type=None, bundle_root=str(ROOT), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()


def write_busi_like(root, n_per_class=6, seed=0):
    """BUSI layout with non-square images (W != H), a second mask file for some lesions, and normal cases."""
    rng = np.random.default_rng(seed)
    families = {"benign": "oval", "malignant": "spiculated", "normal": "none"}
    for cls, family in families.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(1, n_per_class + 1):
            img, mask = synthetic_ultrasound(rng, 40, family)
            img, mask = img[:, 4:34], mask[:, 4:34]  # 40 rows x 30 columns
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            Image.fromarray(mask).save(root / cls / f"{cls} ({i})_mask.png")
            if i == 1 and cls != "normal":
                extra = np.zeros_like(mask)
                extra[30:36, 2:8] = 255
                Image.fromarray(extra).save(root / cls / f"{cls} ({i})_mask_1.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("busi_seg")
    data = write_busi_like(tmp / "busi")
    teacher = write_standin_teacher(tmp / "teacher.pt", spatial_dims=2, block_inplanes=(8, 8, 16, 16))
    common = dict(NET, dataset_dir=str(data), output_dir=str(tmp / "out"), val_fraction=0.2, test_fraction=0.2)
    train = run_bundle(
        BUNDLE,
        ["train.json", "teacher_standin.json"],
        dict(common, **TEACHER, teacher_checkpoint=str(teacher), num_epochs=1, batch_size=4),
        run_id="training",
    )
    run_in_process(["train.json", "evaluate.json"], **common)
    return {"tmp": tmp, "data": data, "teacher": teacher, "common": common, "train_log": train.stdout + train.stderr}


def test_training_logs_drd_terms_and_saves_student(trained):
    log = trained["train_log"]
    for key in ("loss_task", "loss_hybrid", "loss_kl", "loss_cka", "cka_stage3", "val_dice", "val_iou"):
        assert key in log, f"'{key}' missing from the training log"
    out = trained["tmp"] / "out"
    state = torch.load(out / "model.pt", weights_only=True)
    assert not any(k.startswith(("projectors", "teacher")) for k in state)
    split = json.loads((out / "datalist.json").read_text())
    assert sum(len(v) for v in split.values()) == 12  # benign + malignant; normal left out by default
    assert all("masks" in r for v in split.values() for r in v)


def test_evaluation_in_original_resolution(trained):
    metrics = dict(line.split(",") for line in (trained["tmp"] / "out" / "eval" / "metrics.csv").read_text().splitlines())
    assert 0.0 <= float(metrics["test_dice"]) <= 1.0 and 0.0 <= float(metrics["test_iou"]) <= 1.0
    assert float(metrics["test_hd95_px"]) >= 0.0


def test_inference_writes_masks_at_the_input_size(trained):
    out = trained["tmp"] / "pred"
    run_in_process(["inference.json"], **{k: v for k, v in NET.items()}, dataset_dir=str(trained["data"] / "malignant"),
                   output_dir=str(out), ckpt_path=str(trained["tmp"] / "out" / "model.pt"))
    written = sorted(out.glob("*_seg.png"))
    assert len(written) == 6  # masks are not images
    for f in written:
        src = Image.open(trained["data"] / "malignant" / f.name.replace("_seg", ""))
        seg = Image.open(f)
        assert seg.size == src.size == (30, 40)
        assert set(np.unique(np.asarray(seg))) <= {0, 255}


def test_torchscript_export_matches_eager(trained, tmp_path):
    ts = tmp_path / "model.ts"
    overrides = {k: v for k, v in NET.items() if k != "num_workers"}
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
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


def test_metadata_valid():
    meta = validate_metadata(ROOT / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(trained, workflow_type):
    if workflow_type == "train":
        files = [str(ROOT / "configs/train.json"), str(ROOT / "configs/teacher_standin.json")]
        extra = dict(trained["common"], **TEACHER, teacher_checkpoint=str(trained["teacher"]))
    else:
        files, extra = str(ROOT / "configs/inference.json"), dict(NET, dataset_dir=str(trained["data"] / "benign"))
    wf = ConfigWorkflow(config_file=files, meta_file=str(ROOT / "configs/metadata.json"), workflow_type=workflow_type,
                        bundle_root=str(ROOT), **extra)
    wf.initialize()
    assert wf.check_properties() in (None, [])
