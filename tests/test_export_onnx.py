"""Export of every staged student to ONNX (onnxruntime parity, dynamic batch) and TorchScript,
and tools/export_student.py on a bundle's network_def."""

import json
import subprocess
import sys

import pytest
import torch

from drd_components.export import (
    bundle_input_shape,
    bundle_parser,
    export_onnx,
    export_student,
    export_torchscript,
    load_state_dict_file,
    onnx_parity,
    torchscript_parity,
)
from drd_components.networks.students import (
    StagedResNet18,
    StagedShuffleNetV2UNet,
    StagedUNet,
    StagedUNet3D,
    StagedViTSegmenter,
)
from tests.bundle_utils import BUNDLES, REPO_ROOT

pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxruntime onnxscript)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

#: (name, factory, input shape (channels, *spatial)); every student family, tiny
STUDENTS = [
    ("resnet2d", lambda: StagedResNet18(2, 1, 3, block_inplanes=(8, 16, 32, 64)), (1, 32, 32)),
    ("resnet3d", lambda: StagedResNet18(3, 1, 3, block_inplanes=(4, 8, 16, 32)), (1, 16, 16, 16)),
    ("unet2d", lambda: StagedUNet(2, 1, 2, channels=(4, 8, 16)), (1, 32, 32)),
    ("unet3d", lambda: StagedUNet3D(1, 3, channels=(4, 8, 16), strides=[1, [2, 2, 1], 2]), (1, 16, 16, 8)),
    ("shufflenet_unet", lambda: StagedShuffleNetV2UNet(2, 2, width=(8, 16, 32, 64), stage_repeats=(1, 1, 1),
                                                       decoder_channels=(16, 8, 8, 8)), (2, 32, 64)),
    ("vit_segmenter", lambda: StagedViTSegmenter(1, 2, img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                                                 decoder_channels=16), (1, 32, 32)),
]
IDS = [s[0] for s in STUDENTS]


def _randomise_norm_stats(net):
    """Non-trivial BatchNorm statistics, so eval-mode export is checked on real normalisation."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


#: the torch.export-based exporter (PyTorch's default) takes 3-10 s per network on 2 CPU cores, so the
#: parametrised test over every student uses the legacy exporter; the ViT (whose batch axis torch.export
#: specialises with a batch-1 example) also goes through dynamo
CASES = [pytest.param(*s, "torchscript", id=f"{s[0]}-torchscript") for s in STUDENTS]
CASES += [pytest.param(*s, "dynamo", id=f"{s[0]}-dynamo") for s in STUDENTS if s[0] == "vit_segmenter"]


@pytest.mark.parametrize("name,factory,shape,exporter", CASES)
def test_onnx_export_parity_dynamic_batch(name, factory, shape, exporter, tmp_path):
    torch.manual_seed(0)
    net = _randomise_norm_stats(factory())
    path = export_onnx(net, shape, tmp_path / f"{name}.onnx", exporter=exporter)
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, "batch axis is not dynamic"
    parity = onnx_parity(net, path, shape, batch_sizes=(1, 3))
    print(f"{name}: ONNX max abs diff {parity['max_abs_diff']:.3g} (max |out| {parity['max_abs_output']:.3g})")
    assert parity["max_abs_diff"] < 1e-4 * max(1.0, parity["max_abs_output"])


@pytest.mark.parametrize("name,factory,shape", STUDENTS, ids=IDS)
def test_torchscript_export_parity(name, factory, shape, tmp_path):
    torch.manual_seed(0)
    net = _randomise_norm_stats(factory())
    path = export_torchscript(net, tmp_path / f"{name}.ts", extra_files={"note.txt": name})
    extra = {"note.txt": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert extra["note.txt"] in (name, name.encode())
    parity = torchscript_parity(net, path, shape)
    assert parity["max_abs_diff"] < 1e-5 * max(1.0, parity["max_abs_output"])


def test_parity_detects_a_different_network(tmp_path):
    name, factory, shape = STUDENTS[0]
    torch.manual_seed(0)
    path = export_onnx(factory().eval(), shape, tmp_path / "a.onnx", exporter="torchscript")
    torch.manual_seed(1)
    other = factory().eval()
    assert onnx_parity(other, path, shape)["max_abs_diff"] > 1e-3


def test_export_rejects_bad_arguments(tmp_path):
    net = STUDENTS[0][1]()
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(net, (1, 32, 32), tmp_path / "x.onnx", exporter="tf")
    with pytest.raises(ValueError, match="input_shape"):
        export_onnx(net, (32,), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="trace"):
        export_torchscript(net, tmp_path / "x.ts", method="trace")


CLS = BUNDLES / "busi_ultrasound_classification"
SMALL = {"image_size": [32, 32], "network_def#block_inplanes": [8, 8, 16, 16]}


@pytest.fixture()
def cls_weights(tmp_path):
    parser = bundle_parser(CLS, "configs/inference.json", SMALL)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def test_bundle_input_shape_from_config_and_metadata():
    assert bundle_input_shape(bundle_parser(CLS, "configs/inference.json", SMALL)) == [1, 32, 32]
    parser = bundle_parser(CLS, "configs/inference.json")
    del parser.config["image_size"], parser.config["in_channels"]
    assert bundle_input_shape(parser) == [1, 224, 224]  # metadata network_data_format


def test_export_student_writes_verified_onnx_and_report(cls_weights):
    report = export_student(CLS, cls_weights, "onnx", overrides=SMALL, exporter="torchscript")
    onnx_file = cls_weights.with_suffix(".onnx")
    written = json.loads((onnx_file.parent / "model.onnx.json").read_text())
    assert written == report and onnx_file.is_file()
    assert report["input_shape"] == [1, 32, 32] and report["parity"]["passed"]
    assert report["network"].endswith("StagedResNet18") and "onnxruntime" in report["versions"]


def test_export_student_refuses_mismatched_weights(cls_weights, tmp_path):
    state = load_state_dict_file(cls_weights)
    state.pop(next(iter(state)))
    bad = tmp_path / "bad.pt"
    torch.save({"model": state}, bad)
    with pytest.raises(RuntimeError, match="missing"):
        export_student(CLS, bad, "torchscript", overrides=SMALL)


def test_cli_torchscript(cls_weights):
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "export_student.py"), "--bundle_root", str(CLS),
           "--model", str(cls_weights), "--format", "torchscript", "--overrides", json.dumps(SMALL)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PASS" in proc.stdout
    report = json.loads(cls_weights.with_name("model.ts.json").read_text())
    assert report["format"] == "torchscript" and report["parity"]["max_abs_diff"] < 1e-4
    net = torch.jit.load(str(cls_weights.with_suffix(".ts")))
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3)
