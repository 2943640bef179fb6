"""Your own task: ``python -m tools.generate_bundles new ...`` writes a complete bundle that trains on a user datalist.

* a generated 2D segmentation bundle (custom TorchScript teacher, ShuffleNetV2-UNet student) trains one DRD
  epoch on a user datalist with relative paths, evaluates on its test split, infers on new PNGs and exports
  its student to TorchScript;
* other task / teacher / student combinations render valid metadata, a README with every hyper-parameter,
  a student that builds, and a clear start-up error when no datalist is given;
* wrong combinations are refused with the accepted values.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export
from monai.networks.nets import ResNet
from PIL import Image

from drd_components.bundle import validate_metadata
from drd_components.data.user_datalist import make_datalist
from drd_components.data.validation import DataValidationError
from tests.bundle_utils import REPO_ROOT
from tests.test_user_datalist import _frames
from tools.bundle_templates.configs import hyper_parameters
from tools.bundle_templates.new_bundle import new_bundle_spec
from tools.generate_bundles import new


def _run(root: Path, configs: list[str], **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=[str(root / "configs" / c) for c in configs], meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=False, bundle_root=str(root), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def test_generated_bundle_trains_evaluates_infers_and_exports(tmp_path):
    img_dir, mask_dir = _frames(tmp_path / "data", videos=6, per_video=2)
    make_datalist(img_dir, tmp_path / "data" / "datalist.json", mask_dir=mask_dir, group_regex=r"^(video\d+)_",
                  val_fraction=0.2, test_fraction=0.2)
    cmd = [sys.executable, "-m", "tools.generate_bundles", "new", "my_polyp_segmentation", "--task", "segmentation",
           "--spatial_dims", "2", "--num_classes", "2", "--teacher", "custom", "--student", "shufflenet_unet", "--in_channels", "3",
           "--class_names", "[background,polyp]", "--datalist_file", str(tmp_path / "data" / "datalist.json"),
           "--output_dir", str(tmp_path / "bundles")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "bundles" / "my_polyp_segmentation"
    for rel in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/multi_gpu_train.json",
                "configs/metadata.json", "configs/teacher_custom.json", "configs/train_vanilla.json", "docs/README.md", "LICENSE",
                "large_files.yml"):
        assert (root / rel).is_file(), rel
    meta = validate_metadata(root / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "polyp"}

    # the teacher: a small TorchScript network tapped at two layers
    torch.manual_seed(0)
    teacher = ResNet("basic", [1, 1, 1, 1], [8, 8, 16, 16], spatial_dims=2, n_input_channels=3, num_classes=2)
    torch.jit.save(torch.jit.script(teacher), str(tmp_path / "teacher.ts"))
    out = tmp_path / "out"
    common = {"output_dir": str(out), "image_size": [32, 32], "batch_size": 2, "num_workers": 0}
    wf = _run(root, ["train.json"], **common, num_epochs=1, teacher_torchscript=str(tmp_path / "teacher.ts"),
              teacher_layer_names=["layer1", "layer2", "layer3", "layer4"])
    assert 0.0 <= wf.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0
    assert (out / "model.pt").is_file() and (out / "datalist.json").is_file()

    _run(root, ["train.json", "evaluate.json"], **common)
    rows = dict(line.split(",")[:2] for line in (out / "eval" / "metrics.csv").read_text().splitlines())
    assert 0.0 <= float(rows["test_mean_dice"]) <= 1.0

    (tmp_path / "new").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (37 + i, 29, 3), dtype=np.uint8)).save(tmp_path / "new" / f"case{i}.png")
    _run(root, ["inference.json"], dataset_dir=str(tmp_path / "new"), output_dir=str(tmp_path / "pred"),
         ckpt_path=str(out / "model.pt"), image_size=[32, 32])
    with open(tmp_path / "pred" / "run_report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert np.asarray(Image.open(tmp_path / "pred" / "case1_seg.png")).shape[:2] == (38, 29)

    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(out / "model.pt"),
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "inference.json"),
                bundle_root=str(root), image_size=[32, 32])
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    net = wf.parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    net.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args", [
    dict(name="nodule_classification", task="classification", spatial_dims=3, num_classes=2, teacher="merlin", modality="CT",
         intensity="ct:-1000,400"),
    dict(name="organ_segmentation", task="segmentation", spatial_dims=3, num_classes=3, teacher="sat_nano", modality="CT"),
    dict(name="xray_classification", task="classification", spatial_dims=2, num_classes=4, teacher="radimagenet_densenet121"),
    dict(name="lesion_segmentation", task="segmentation", spatial_dims=2, num_classes=2, teacher="standin", student="vit_tiny"),
    dict(name="cell_segmentation", task="segmentation", spatial_dims=2, num_classes=3, teacher="custom", student="unet"),
], ids=lambda a: a["name"])
def test_generated_bundles_render_and_ask_for_a_datalist(tmp_path, args):
    root = Path(new(output_dir=tmp_path, **args))
    spec = new_bundle_spec(**{k: v for k, v in args.items()})
    validate_metadata(root / "configs" / "metadata.json")
    readme = (root / "docs" / "README.md").read_text()
    missing = [k for k in hyper_parameters(spec) if f"`{k}`" not in readme]
    assert not missing, missing
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root), "output_dir": str(tmp_path / "out")})
    net = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in net.parameters()) > 0
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("datalist")
    cause = info.value
    while cause is not None and not isinstance(cause, DataValidationError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and "'datalist_file' is not set" in str(cause)


def test_new_refuses_wrong_combinations(tmp_path):
    with pytest.raises(ValueError, match="2D model, the task is 3D"):
        new_bundle_spec("x_segmentation", "segmentation", 3, 2, "medsam")
    with pytest.raises(ValueError, match="does not fit a 2D classification task; expected one of \\['resnet18'\\]"):
        new_bundle_spec("x_classification", "classification", 2, 2, "standin", student="unet")
    with pytest.raises(ValueError, match="must contain 'classification'"):
        new_bundle_spec("xray", "classification", 2, 2, "standin")
    with pytest.raises(ValueError, match="expected one of"):
        new_bundle_spec("x_classification", "classification", 2, 2, "dinov2")
    with pytest.raises(SystemExit, match="bundles/ holds the generated collection"):
        new("x_classification", "classification", 2, 2, "standin", output_dir=REPO_ROOT / "bundles")
    assert json.loads(Path(new("ok_classification", "classification", 2, 2, "standin", output_dir=tmp_path,
                                datalist_file=str(tmp_path / "d.json"))).joinpath("configs", "train.json").read_text())[
        "datalist_file"] == str((tmp_path / "d.json").resolve())
