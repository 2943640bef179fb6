"""Baselines: loss behaviour, LoRA, teacher heads, and one training iteration of every overlay."""

import json

import pytest
import torch
from monai.bundle import ConfigWorkflow

from drd_components.baselines import (
    FitNetLoss,
    FitNetTrainer,
    HintAdapters,
    KDTrainer,
    LogitKDLoss,
    TeacherWithHead,
    apply_lora,
    lora_layer_names,
    lora_parameters,
)
from drd_components.data.synthetic import write_synthetic_busi
from drd_components.networks import StagedResNet18
from drd_components.teachers import ResNetStandInTeacher
from tests.bundle_utils import BUNDLES, REPO_ROOT, write_standin_teacher

OVERLAYS = REPO_ROOT / "tools" / "bundle_templates" / "overlays"
BUNDLE = BUNDLES / "busi_ultrasound_classification"
TINY = (8, 16, 32, 64)


def _teacher():
    torch.manual_seed(0)
    return ResNetStandInTeacher(block_inplanes=TINY)


def _loader(n=4, size=32):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(n, 1, size, size, generator=g), "label": torch.arange(n) % 3}]


def test_kd_identical_logits_give_zero_kl_and_differing_logits_do_not():
    loss = LogitKDLoss(torch.nn.CrossEntropyLoss(), temperature=4.0, kd_weight=0.3)
    logits = torch.randn(5, 3)
    target = torch.tensor([0, 1, 2, 0, 1])
    same = loss(logits, target, logits.clone())
    assert float(same["loss_kd"]) == pytest.approx(0.0, abs=1e-6)
    assert float(same["loss"]) == pytest.approx(0.7 * float(torch.nn.functional.cross_entropy(logits, target)), rel=1e-5)
    assert float(loss(logits, target, torch.randn(5, 3))["loss_kd"]) > 1e-4
    seg = torch.randn(2, 3, 4, 4)
    seg_loss = LogitKDLoss(torch.nn.CrossEntropyLoss(), kd_weight=1.0)
    assert float(seg_loss(seg, torch.zeros(2, 4, 4, dtype=torch.long), seg.clone())["loss_kd"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        loss(logits, target, torch.randn(5, 4))


def test_kd_trainer_moves_student_towards_frozen_teacher_head():
    teacher = _teacher()
    kd_teacher = TeacherWithHead(teacher, "classification", 3, [2, 1, 32, 32], mode="probe")
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    before = {k: v.clone() for k, v in kd_teacher.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    trainer = KDTrainer("cpu", 1, _loader(), student, opt, LogitKDLoss(torch.nn.CrossEntropyLoss()), kd_teacher)
    trainer.run()
    out = trainer.state.output[0]
    assert {"loss_task", "loss_kd"} <= set(out)
    assert all(torch.equal(v, before[k]) for k, v in kd_teacher.state_dict().items())
    assert all(p.grad is None for p in kd_teacher.parameters())


def test_fitnet_adapters_receive_gradients_teacher_does_not():
    teacher = _teacher()
    student = StagedResNet18(2, 1, 3, block_inplanes=TINY)
    adapters = HintAdapters.from_models(teacher, student, [2, 1, 32, 32], stages="all")
    assert [a.out_channels for a in adapters.adapters] == [8, 16, 32, 64]
    opt = torch.optim.SGD(list(student.parameters()) + list(adapters.parameters()), lr=0.01)
    trainer = FitNetTrainer("cpu", 1, _loader(), student, opt, FitNetLoss(torch.nn.CrossEntropyLoss()), teacher,
                            adapters=adapters)
    trainer.run()
    for name, p in adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"adapter {name} got no gradient"
    assert all(p.grad is None for p in teacher.parameters())
    assert float(trainer.state.output[0]["loss_hint"]) > 0


def test_lora_starts_identical_trains_only_factors_and_keeps_base_weights():
    teacher = _teacher()
    x = torch.rand(2, 1, 32, 32)
    reference = [f.clone() for f in teacher.stage_features(x)]
    names = apply_lora(teacher, rank=2, alpha=4.0)
    assert names and set(names) == set(lora_layer_names(teacher))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(teacher.stage_features(x), reference))
    base = {n: p.detach().clone() for n, p in teacher.named_parameters() if n.endswith("original")}
    assert base, "no parametrized base weight found"
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    opt = torch.optim.SGD(lora_parameters(teacher), lr=0.5)
    loss = sum(f.square().mean() for f in teacher.forward_features(teacher.preprocessing(x)))
    loss.backward()
    opt.step()
    for n, p in teacher.named_parameters():
        if n.endswith("original"):
            assert torch.equal(p, base[n]), f"base weight {n} changed"
    changed = teacher.stage_features(x)[-1]
    assert not torch.allclose(changed, reference[-1], atol=1e-6), "LoRA update had no effect"


def test_teacher_head_segmentation_decoder_and_modes():
    model = TeacherWithHead(_teacher(), "segmentation", 2, [2, 1, 32, 32], mode="probe", hidden_channels=8)
    x = torch.rand(2, 1, 32, 32)
    y = model(x)
    assert y.shape == (2, 2, 32, 32)
    y.mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    ft = TeacherWithHead(_teacher(), "classification", 3, [2, 1, 32, 32], mode="finetune")
    ft(x).sum().backward()
    assert all(p.grad is not None for p in ft.teacher.parameters() if p.requires_grad)
    assert len(ft.trainable_parameters()) == len(list(ft.parameters()))
    with pytest.raises(ValueError, match="mode"):
        TeacherWithHead(_teacher(), "classification", 3, [2, 1, 32, 32], mode="prompt")


# --------------------------------------------------------------- overlays on the BUSI classification bundle
# overlay -> (file in the best-validation CheckpointSaver, keys the resume checkpoint must hold)
CASES = {
    "vanilla": ("model.pt", {"model", "optimizer", "lr_scheduler"}),
    "linear_probe": ("teacher_probe/teacher_head.pt", {"head", "optimizer"}),
    "finetune": ("teacher_finetune/teacher_finetuned.pt", {"model", "optimizer"}),
    "lora": ("teacher_lora/teacher_lora.pt", {"model", "optimizer"}),
    "kd": ("model.pt", {"model", "optimizer"}),
    "lora_kd": ("model.pt", {"model", "optimizer"}),
    "fitnet": ("model.pt", {"model", "adapters", "optimizer"}),
    "rd": ("model.pt", {"model", "projectors"}),
    "drd_no_cka": ("model.pt", {"model", "projectors"}),
    "drd_no_kl": ("model.pt", {"model", "projectors"}),
    "drd_no_hybrid": ("model.pt", {"model", "projectors"}),
    "drd_cache": ("model.pt", {"model", "projectors"}),
}


@pytest.fixture(scope="module")
def overlay_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlays")
    data = write_synthetic_busi(tmp / "busi", n_per_class=7, size=32, seed=1)
    teacher = write_standin_teacher(tmp / "teacher.pt", block_inplanes=TINY)
    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    base = {"bundle_root": str(BUNDLE), "dataset_dir": str(data), "num_workers": 0, "image_size": [32, 32],
            "num_epochs": 1, "batch_size": 4, "train#trainer#epoch_length": 1, "teacher_checkpoint": str(teacher),
            "teacher_def#block_inplanes": list(TINY), "network_def#block_inplanes": list(TINY)}
    # contract ids (notes/bundle_ids.md) the hand-written bundle may not have yet
    for key, value in {"task": "classification", "spatial_dims": 2, "train_size": [32, 32],
                       "task_loss": "$torch.nn.CrossEntropyLoss()"}.items():
        if key not in config:
            base[key] = value
    if "train_save_dict" not in config:
        base["train#handlers#3#save_dict"] = "@train_save_dict"
    results = {}
    for name in CASES:
        out = tmp / name
        extra = {}
        if name == "kd":
            extra["teacher_head_checkpoint"] = str(tmp / "linear_probe" / "teacher_probe" / "teacher_head.pt")
        if name == "lora_kd":
            extra["teacher_lora_checkpoint"] = str(tmp / "lora" / "teacher_lora" / "teacher_lora.pt")
        files = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "teacher_standin.json"),
                 str(OVERLAYS / f"train_{name}.json")]
        wf = ConfigWorkflow(config_file=files, workflow_type="train", **base, output_dir=str(out), **extra)
        wf.initialize()
        wf.run()
        results[name] = {"out": out, "trainer": wf.parser.get_parsed_content("train#trainer"),
                         "network": wf.parser.get_parsed_content("network")}
        wf.finalize()
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_overlay_trains_one_iteration_and_saves_its_state(overlay_runs, name):
    run = overlay_runs[name]
    assert run["trainer"].state.iteration == 1
    best, resume_keys = CASES[name]
    assert (run["out"] / best).is_file(), f"{name}: {best} not written"
    resume = torch.load(next((run["out"] / best).parent.glob("resume_checkpoint_epoch=*.pt")), weights_only=True)
    assert resume_keys <= set(resume), f"{name}: resume checkpoint has {sorted(resume)}"


def test_deployed_models_and_semantics(overlay_runs):
    assert isinstance(overlay_runs["linear_probe"]["network"], TeacherWithHead)
    assert isinstance(overlay_runs["lora"]["network"], TeacherWithHead)
    assert isinstance(overlay_runs["kd"]["network"], StagedResNet18)
    assert overlay_runs["rd"]["trainer"].projectors.student_stages == [3]
    assert overlay_runs["drd_no_cka"]["trainer"].loss_function.use_cka is False
    assert overlay_runs["drd_no_kl"]["trainer"].loss_function.use_kl is False
    assert overlay_runs["drd_no_hybrid"]["trainer"].loss_function.use_hybrid is False
    cache = overlay_runs["drd_cache"]["trainer"].feature_cache
    assert cache.misses == 4 and len(cache) == 4
    # the probe head file is what KD loads: a plain head state dict
    head = torch.load(overlay_runs["linear_probe"]["out"] / "teacher_probe" / "teacher_head.pt", weights_only=True)
    assert set(head) == {"fc.weight", "fc.bias"}


def test_overlay_expressions_only_use_modules_a_bundle_has_imported():
    """``$`` expressions see ``drd_components`` as the bundle imported it (``$import drd_components``),
    so any sub-module they use must be reachable from the package without a further import."""
    import re
    import subprocess
    import sys

    used = set()
    for path in OVERLAYS.glob("*.json"):
        for expr in re.findall(r'"\$([^"]*)"', path.read_text()):
            used |= set(re.findall(r"drd_components((?:\.\w+)+)", expr))
    script = (
        "import drd_components, functools, sys\n"
        f"paths = {sorted(used)!r}\n"
        "missing = []\n"
        "for p in paths:\n"
        "    obj = drd_components\n"
        "    for part in p.strip('.').split('.'):\n"
        "        if not hasattr(obj, part):\n"
        "            missing.append(p); break\n"
        "        obj = getattr(obj, part)\n"
        "sys.exit(f'not reachable: {missing}' if missing else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
