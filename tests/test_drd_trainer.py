"""DRDTrainer: one DRD iteration does what the method says and behaves like a MONAI trainer."""

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import StatsHandler, ValidationHandler

from drd_components.engines import LOSS_TERM_KEYS, DRDTrainer
from drd_components.handlers import LossTermsTransform
from drd_components.losses import DRDLoss, LinearSchedule
from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import ResNetStandInTeacher


def _data(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(1, size, size, generator=g), "label": torch.tensor(i % 3)} for i in range(n)]


def _build(epochs=1, amp=False, batch_size=4, stages="all", **trainer_kwargs):
    torch.manual_seed(0)
    teacher = ResNetStandInTeacher(block_inplanes=(8, 16, 32, 64))
    student = StagedResNet18(2, 1, 3, block_inplanes=(8, 16, 32, 64))
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 32, 32], stages=stages)
    opt = torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.01)
    loader = DataLoader(_data(), batch_size=batch_size, shuffle=False)
    trainer = DRDTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=loader,
        network=student,
        optimizer=opt,
        loss_function=DRDLoss(torch.nn.CrossEntropyLoss()),
        teacher=teacher,
        projectors=projectors,
        amp=amp,
        **trainer_kwargs,
    )
    return trainer, teacher, student, projectors


def test_one_iteration_teacher_frozen_everything_else_learns():
    trainer, teacher, student, projectors = _build(epoch_length=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.run()
    assert trainer.state.iteration == 1
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    for name, module in (("student", student), ("projectors", projectors)):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"


def test_hybrid_paths_leave_batchnorm_running_stats_to_the_student_path():
    import copy

    trainer, _, student, _ = _build(epoch_length=1)
    reference = copy.deepcopy(student).train()
    batch = next(iter(trainer.data_loader))
    with torch.no_grad():
        reference(batch["image"])  # one plain training-mode forward updates the running stats
    trainer.run()
    ref_state = reference.state_dict()
    for key, value in student.state_dict().items():
        if "running_" in key or "num_batches_tracked" in key:
            torch.testing.assert_close(value, ref_state[key], msg=f"{key} was changed by a hybrid path")


def test_schedule_and_terms_add_up():
    trainer, *_ = _build(epochs=3)  # 2 iterations per epoch -> 6 iterations
    seen = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        out = engine.state.output[0]
        total = sum(float(out[k]) for k in LOSS_TERM_KEYS)
        assert float(out["loss"]) == pytest.approx(total, rel=1e-5, abs=1e-6)
        seen.append((engine.state.drd_terms["alpha"], engine.state.drd_terms["beta"]))

    trainer.run()
    expected = [1 - i / 5 for i in range(6)]
    assert [a for a, _ in seen] == pytest.approx(expected)
    assert [b for _, b in seen] == pytest.approx(expected)


def test_custom_schedules():
    trainer, *_ = _build(
        epochs=2, alpha_schedule=LinearSchedule(0.5, 0.5), beta_schedule=LinearSchedule(0.0, 1.0)
    )
    trainer.run()
    assert trainer.state.drd_terms["alpha"] == pytest.approx(0.5)
    assert trainer.state.drd_terms["beta"] == pytest.approx(1.0)


def test_amp_bfloat16_on_cpu():
    trainer, _, student, _ = _build(amp=True, epoch_length=2)
    assert trainer.amp_dtype == torch.bfloat16
    trainer.run()
    assert torch.isfinite(torch.tensor(trainer.state.drd_terms["loss"]))
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_fires_events_and_works_with_stock_handlers(capsys):
    trainer, _, student, _ = _build(epochs=1)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=DataLoader(_data(4), batch_size=2), network=student)
    ValidationHandler(validator=evaluator, interval=1).attach(trainer)
    StatsHandler(name="drd_test", output_transform=LossTermsTransform(), iteration_log=True).attach(trainer)
    from monai.engines.utils import IterationEvents

    fired = []
    for ev in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
               IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
        trainer.add_event_handler(ev, lambda e, ev=ev: fired.append(ev))
    trainer.run()
    assert len(fired) == 4 * 2
    assert evaluator.state.iteration == 2  # validation ran with the student
    logged = capsys.readouterr().out + capsys.readouterr().err
    for key in ("loss_task", "loss_hybrid", "loss_kl", "loss_cka", "cka_stage3", "alpha"):
        assert key in logged


def test_rd_preset_single_projector():
    trainer, _, _, projectors = _build(stages="last", epoch_length=1)
    trainer.run()
    assert projectors.student_stages == [3]
    assert set(k for k in trainer.state.drd_terms if k.startswith("cka_stage")) == {"cka_stage3"}


def test_rejects_non_staged_network_and_wrong_loss():
    trainer, teacher, student, projectors = _build()
    with pytest.raises(TypeError, match="StagedNetwork"):
        DRDTrainer("cpu", 1, [], torch.nn.Linear(2, 2), trainer.optimizer, trainer.loss_function, teacher, projectors)
    with pytest.raises(TypeError, match="DRDLoss"):
        DRDTrainer("cpu", 1, [], student, trainer.optimizer, torch.nn.CrossEntropyLoss(), teacher, projectors)


def test_cka_detach_reprogrammed_keeps_cka_gradients_out_of_the_projectors():
    from drd_components.losses import CKALoss, DRDLoss

    torch.manual_seed(0)
    r = torch.randn(6, 8, 4, 4, requires_grad=True)
    s = torch.randn(6, 8, 4, 4, requires_grad=True)
    for detach, expect_grad in ((False, True), (True, False)):
        r.grad = s.grad = None
        loss = DRDLoss(torch.nn.CrossEntropyLoss(), cka_loss=CKALoss(samples="positions"), cka_detach_reprogrammed=detach)
        out = loss(torch.randn(6, 3), torch.randint(0, 3, (6,)), student_features=[s], reprogrammed_features=[r])
        out["loss_cka"].backward()
        assert (r.grad is not None and r.grad.abs().sum() > 0) == expect_grad
        assert s.grad.abs().sum() > 0  # the student is always pulled toward r


def test_teacher_skips_feed_the_reprogrammed_maps_to_the_decoder():
    from drd_components.engines import DRDTrainer
    from drd_components.losses import DRDLoss
    from drd_components.networks import ReprogrammingModule
    from drd_components.networks.students.shufflenet_unet import StagedShuffleNetV2UNet
    from drd_components.teachers import ResNetStandInTeacher

    torch.manual_seed(0)
    student = StagedShuffleNetV2UNet(in_channels=1, out_channels=2)
    teacher = ResNetStandInTeacher(spatial_dims=2, in_channels=1, block_inplanes=(8, 16, 32, 64))
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 64, 64])
    kwargs = dict(device="cpu", max_epochs=1, train_data_loader=[], network=student,
                  optimizer=torch.optim.SGD(student.parameters(), lr=0.1), loss_function=DRDLoss(torch.nn.CrossEntropyLoss()),
                  teacher=teacher, projectors=projectors)
    x = torch.rand(2, 1, 64, 64)
    s_feats = student.forward_stages(x)
    r = projectors(teacher.stage_features(x), s_feats)
    own = DRDTrainer(**kwargs).hybrid_skip_features(r, s_feats)
    assert all(a is b for a, b in zip(own, s_feats))
    tskip = DRDTrainer(**kwargs, hybrid_skips="teacher").hybrid_skip_features(r, s_feats)
    assert all(a is b for a, b in zip(tskip, r))
    # the deepest hybrid path with teacher skips is the frozen-teacher encoder + the student's decoder
    assert torch.equal(student.forward_from(3, r[3], tskip), student.forward_head(r))
    rd = ReprogrammingModule.from_models(teacher, student, [2, 1, 64, 64], stages="last")
    with pytest.raises(ValueError, match="every stage"):
        DRDTrainer(**{**kwargs, "projectors": rd}, hybrid_skips="teacher")


def _grads(module):
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("checkpoint_hybrid", [False, True])
def test_hybrid_grad_projectors_trains_the_projectors_and_leaves_the_student_to_its_own_path(checkpoint_hybrid):
    """hybrid_grad="projectors": the hybrid task loss reaches the projectors, never the student."""
    from monai.losses import DiceCELoss

    from drd_components.networks.students.shufflenet_unet import StagedShuffleNetV2UNet

    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.rand(1, 64, 64, generator=g), "label": (torch.rand(1, 64, 64, generator=g) > 0.7).float()}
            for _ in range(4)]

    def one_step(hybrid_grad, use_hybrid):
        torch.manual_seed(0)
        teacher = ResNetStandInTeacher(spatial_dims=2, in_channels=1, block_inplanes=(8, 16, 32, 64))
        student = StagedShuffleNetV2UNet(in_channels=1, out_channels=2, checkpoint_hybrid=checkpoint_hybrid)
        projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 64, 64])
        loss = DRDLoss(DiceCELoss(to_onehot_y=True, softmax=True), use_hybrid=use_hybrid, use_kl=False, use_cka=False)
        trainer = DRDTrainer(device="cpu", max_epochs=1, epoch_length=1, network=student, teacher=teacher,
                             train_data_loader=DataLoader(data, batch_size=4), projectors=projectors, loss_function=loss,
                             optimizer=torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.0),
                             hybrid_grad=hybrid_grad, hybrid_skips="teacher")
        trainer.run()
        assert all(p.requires_grad for p in student.parameters()), "requires_grad was not restored"
        return _grads(student), _grads(projectors), trainer.state.drd_terms["loss_hybrid"]

    task_only, _, _ = one_step("student", use_hybrid=False)
    shared, _, _ = one_step("student", use_hybrid=True)
    proj_only, proj_grads, hybrid_term = one_step("projectors", use_hybrid=True)
    assert float(hybrid_term) > 0
    assert any(g is not None and g.abs().sum() > 0 for g in proj_grads.values()), "projectors got no gradient"
    for name, g in proj_only.items():
        if task_only[name] is None:
            assert g is None or g.abs().sum() == 0, f"{name}: gradient from the hybrid paths"
        else:
            torch.testing.assert_close(g, task_only[name], msg=f"{name}: the hybrid loss reached the student")
    # with the paper's co-training the same hybrid loss does reach the student's later stages
    assert any(shared[n] is not None and task_only[n] is not None and not torch.allclose(shared[n], task_only[n])
               for n in shared)


def test_rejects_unknown_hybrid_grad():
    with pytest.raises(ValueError, match="hybrid_grad"):
        _build(hybrid_grad="decoder")
