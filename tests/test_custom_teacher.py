"""Your own teacher: CustomTeacher taps any nn.Module (config _target_, class + state dict, TorchScript file).

* the taps equal the sub-modules' outputs (forward hooks on the eager model as the reference), for a
  MONAI network built from a config ``_target_`` and for scripted and traced TorchScript files;
* the teacher is frozen and stays in eval mode; token sequences (MONAI ViT) and CNN maps both get
  projectors from one dry run;
* clear errors for unknown layer names, conflicting sources and checkpoints of another model;
* ``configs/teacher_custom.json`` trains a bundle for one epoch with a MONAI network given by
  ``_target_`` and with a TorchScript file.
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import ResNet

from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import CustomTeacher
from drd_components.teachers.checkpoint import CheckpointError
from tests.bundle_utils import BUNDLES

TINY_RESNET = {"_target_": "monai.networks.nets.ResNet", "block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [8, 8, 16, 16],
               "spatial_dims": 2, "n_input_channels": 3, "num_classes": 2}
LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def _resnet(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ConfigParser({"net": TINY_RESNET}).get_parsed_content("net").eval()


def _reference(net: torch.nn.Module, names, x) -> list[torch.Tensor]:
    out, handles = {}, []
    for n in names:
        handles.append(net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)))
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return [out[n] for n in names]


def test_config_target_with_state_dict_taps_the_named_layers(tmp_path):
    net = _resnet()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "teacher.pt")  # DDP-style file
    parser = ConfigParser({"teacher": {"_target_": "drd_components.teachers.CustomTeacher", "model": dict(TINY_RESNET),
                                       "checkpoint": str(tmp_path / "teacher.pt"), "layer_names": LAYERS, "in_channels": 3}})
    teacher = parser.get_parsed_content("teacher")
    x = torch.rand(2, 1, 32, 32)  # grey input: TeacherPreprocessing repeats it to the model's 3 channels
    feats = teacher.stage_features(x)
    ref = _reference(net, LAYERS, x.expand(-1, 3, -1, -1))
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.tap_names == tuple(LAYERS)


def test_class_path_plus_state_dict_and_clear_errors(tmp_path):
    net = _resnet()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    kwargs = {k: v for k, v in TINY_RESNET.items() if k != "_target_"}
    teacher = CustomTeacher(LAYERS[:2], model="monai.networks.nets.ResNet", model_kwargs=kwargs, checkpoint=tmp_path / "w.pt")
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(teacher.stage_features(x)[1], _reference(net, ["layer2"], x)[0])

    with pytest.raises(ValueError, match="'layer9' is not a sub-module.*layer1"):
        CustomTeacher(["layer9"], model=_resnet(), allow_random=True)
    with pytest.raises(ValueError, match="exactly one of 'model'"):
        CustomTeacher(LAYERS, model=_resnet(), torchscript_file=tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no 'checkpoint'"):
        CustomTeacher(LAYERS, model=_resnet())
    other = dict(kwargs, block_inplanes=[4, 8, 16, 16])
    with pytest.raises(CheckpointError, match="w.pt"):
        CustomTeacher(LAYERS, model="monai.networks.nets.ResNet", model_kwargs=other, checkpoint=tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        CustomTeacher(LAYERS, model=_resnet(), checkpoint=tmp_path / "w.pt", sha256="0" * 64)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_file_taps_equal_the_eager_layers(tmp_path, how):
    net = _resnet(1)
    x = torch.rand(2, 3, 32, 32)
    names = LAYERS + ["layer1.0", "layer3.0.conv1"]  # nested names, blocks of a shared TorchScript class
    ref = _reference(net, names, x)
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, x)
    torch.jit.save(scripted, str(tmp_path / "teacher.ts"))
    teacher = CustomTeacher(names, torchscript_file=tmp_path / "teacher.ts", in_channels=3)
    for _ in range(2):  # the taps are re-armed on every call
        feats = teacher.stage_features(x)
        for name, f, r in zip(names, feats, ref):
            torch.testing.assert_close(f, r, msg=name)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="'fc2' is not a sub-module"):
        CustomTeacher(["fc2"], torchscript_file=tmp_path / "teacher.ts")
    with pytest.raises(ValueError, match="'checkpoint' is a state dict"):
        CustomTeacher(LAYERS, torchscript_file=tmp_path / "teacher.ts", checkpoint=tmp_path / "teacher.ts")


class _TinyViT(torch.nn.Module):
    """Patch embedding + transformer blocks returning ``B x N x C`` tokens (a class token first)."""

    def __init__(self, dim: int = 48, depth: int = 4) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, dim, 8, stride=8)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = torch.nn.ModuleList(torch.nn.TransformerEncoderLayer(dim, 4, 2 * dim, batch_first=True) for _ in range(depth))

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for b in self.blocks:
            t = b(t)
        return t


def test_projectors_adapt_to_token_sequences_and_maps():
    torch.manual_seed(0)
    vit = _TinyViT()
    teacher = CustomTeacher(["blocks.0", "blocks.1", "blocks.2", "blocks.3"], model=vit, allow_random=True, in_channels=3,
                            spatial_size=32)
    student = StagedResNet18(spatial_dims=2, in_channels=1, num_classes=2)
    x = torch.rand(2, 1, 40, 40)
    feats = teacher.stage_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 17, 48)] * 4  # class token + 4 x 4 patch tokens
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 40, 40])
    s_feats = student.forward_stages(x)
    for r, s in zip(projectors(feats, s_feats), s_feats):
        assert r.shape == s.shape
    grid = CustomTeacher(["blocks.3"], model=vit, allow_random=True, in_channels=3, spatial_size=32, token_grid=[4, 4],
                         num_prefix_tokens=1)
    assert tuple(grid.stage_features(x)[0].shape) == (2, 48, 4, 4)


# ------------------------------------------------------------------------------------------------
# the overlay in a bundle
# ------------------------------------------------------------------------------------------------
BUNDLE = "retina_fundus_classification"


def _train(tmp_path, **overrides):
    from tests.fake_datasets import write_fake_retinamnist
    from tests.test_bundles import run_workflow

    data = write_fake_retinamnist(tmp_path / "data")
    out = tmp_path / "out"
    wf = run_workflow(BUNDLE, ["train.json", "teacher_custom.json"], dataset_dir=str(data), output_dir=str(out), verify_md5=False,
                      image_size=[32, 32], batch_size=4, num_workers=0, num_epochs=1, **overrides)
    trainer = wf.parser.get_parsed_content("train#trainer")
    terms = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
    assert torch.isfinite(torch.as_tensor(terms["loss_cka"])) and (out / "model.pt").is_file()
    return wf


def test_overlay_in_every_bundle():
    for path in sorted(BUNDLES.iterdir()):
        overlay = json.loads((path / "configs" / "teacher_custom.json").read_text())
        assert overlay["teacher_def"]["_target_"] == "drd_components.teachers.CustomTeacher"


def test_bundle_trains_with_a_monai_network_given_by_target(tmp_path):
    torch.manual_seed(0)
    net = ConfigParser({"net": dict(TINY_RESNET)}).get_parsed_content("net")
    torch.save(net.state_dict(), tmp_path / "resnet.pt")
    wf = _train(tmp_path, teacher_model=TINY_RESNET, teacher_layer_names=LAYERS, teacher_checkpoint=str(tmp_path / "resnet.pt"))
    teacher = wf.parser.get_parsed_content("teacher")
    assert isinstance(teacher, CustomTeacher) and teacher.tap_names == tuple(LAYERS)


def test_bundle_trains_with_a_torchscript_teacher(tmp_path):
    torch.jit.save(torch.jit.script(_resnet(2)), str(tmp_path / "teacher.ts"))
    wf = _train(tmp_path, teacher_torchscript=str(tmp_path / "teacher.ts"), teacher_layer_names=["layer2", "layer3", "layer4"])
    assert isinstance(wf.parser.get_parsed_content("teacher").model, torch.jit.ScriptModule)
