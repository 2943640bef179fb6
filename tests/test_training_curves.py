"""TrainingCurvesWriter: DRD loss terms, alpha/beta, per-stage CKA and validation metrics end up
in training_curves.json/.png, at the end of a run and when it crashes; ProgressBar works beside it."""

import json

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import ValidationHandler

from drd_components.engines import LOSS_TERM_KEYS, DRDTrainer
from drd_components.handlers.training_curves import TrainingCurvesWriter, curve_group
from drd_components.losses import DRDLoss, LinearSchedule
from drd_components.networks import ReprogrammingModule, StagedResNet18
from drd_components.teachers import ResNetStandInTeacher

pytest.importorskip("matplotlib", reason="matplotlib is not installed (needed for training_curves.png)")


def _data(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, size, size, generator=g), "label": torch.tensor(i % 3)} for i in range(n)]


def _trainer(epochs=2):
    torch.manual_seed(0)
    teacher = ResNetStandInTeacher(block_inplanes=(8, 8, 16, 16))
    student = StagedResNet18(2, 1, 3, block_inplanes=(8, 8, 16, 16))
    projectors = ReprogrammingModule.from_models(teacher, student, [2, 1, 32, 32], stages="all")
    opt = torch.optim.SGD(list(student.parameters()) + list(projectors.parameters()), lr=0.01)
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=DataLoader(_data(4), batch_size=4), network=student,
        key_val_metric={"val_accuracy": Accuracy(output_transform=lambda o: (torch.stack([d["pred"] for d in o]),
                                                                             torch.stack([torch.as_tensor(d["label"]) for d in o])))},
    )
    trainer = DRDTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=DataLoader(_data(), batch_size=4), network=student,
        optimizer=opt, loss_function=DRDLoss(torch.nn.CrossEntropyLoss()), teacher=teacher, projectors=projectors,
        alpha_schedule=LinearSchedule(1.0, 0.0), beta_schedule=LinearSchedule(1.0, 0.0),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    return trainer, evaluator


def test_curves_record_every_drd_term_and_the_validation_metric(tmp_path):
    trainer, evaluator = _trainer(epochs=2)
    writer = TrainingCurvesWriter(tmp_path / "ckpt", validator=evaluator, interval=0)
    writer.attach(trainer)
    trainer.run()
    data = json.loads((tmp_path / "ckpt" / "training_curves.json").read_text())
    assert data["status"] == "completed"
    stages = [f"cka_stage{i}" for i in range(4)]
    for key in ("loss", *LOSS_TERM_KEYS, "alpha", "beta", *stages):
        assert len(data["iteration"][key]) == 4, key  # 2 epochs x 2 iterations
        assert [e for e, _ in data["epoch"][key]] == [1.0, 2.0], key
    # the epoch mean is the mean of that epoch's iterations
    it = [v for _, v in data["iteration"]["loss_task"][:2]]
    assert data["epoch"]["loss_task"][0][1] == pytest.approx(sum(it) / 2)
    # alpha decays linearly from 1 over the run
    alphas = [v for _, v in data["iteration"]["alpha"]]
    assert alphas[0] == pytest.approx(1.0) and alphas == sorted(alphas, reverse=True) and alphas[-1] < 1.0
    assert [e for e, _ in data["epoch"]["val_accuracy"]] == [1.0, 2.0]
    assert data["epoch"]["val_accuracy"][-1][1] == pytest.approx(evaluator.state.metrics["val_accuracy"])
    assert data["groups"]["cka_stage2"] == "CKA per stage" and data["groups"]["val_accuracy"] == "validation"
    png = (tmp_path / "ckpt" / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_crashed_run_still_leaves_curves_and_reraises(tmp_path):
    trainer, _ = _trainer(epochs=3)
    writer = TrainingCurvesWriter(tmp_path, interval=0)
    writer.attach(trainer)

    @trainer.on(Events.ITERATION_COMPLETED(once=3))
    def _boom(engine):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.run()
    data = json.loads((tmp_path / "training_curves.json").read_text())
    assert data["status"].startswith("failed: RuntimeError: simulated crash")
    assert len(data["iteration"]["loss"]) == 3
    assert (tmp_path / "training_curves.png").is_file()


def test_interval_writes_during_training_and_plain_engines_work(tmp_path):
    values = iter(range(100))
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(next(values))), "pred": torch.zeros(1)})
    writer = TrainingCurvesWriter(tmp_path, interval=1, plot=False)
    writer.attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(json.loads((tmp_path / "training_curves.json").read_text())))
    engine.run([0, 1, 2], max_epochs=2)
    assert seen[0]["epoch"]["loss"] == [[1.0, 1.0]] and seen[0]["status"] == "running"
    assert seen[1]["epoch"]["loss"][-1] == [2.0, 4.0]
    assert not (tmp_path / "training_curves.png").exists()
    with pytest.raises(ValueError):
        TrainingCurvesWriter(tmp_path, interval=-1)


def test_curve_groups():
    assert curve_group("loss_kl") == "loss terms" and curve_group("beta") == "alpha / beta"
    assert curve_group("val_mean_dice") == "validation" and curve_group("lr") == "learning rate"


def test_progress_bar_is_a_bundle_handler(tmp_path, capsys):
    """The snippet given for bundles: ignite's tqdm ProgressBar attached like a MONAI handler."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"is_not_rank0": False, "bar": {"_target_": "ignite.handlers.ProgressBar",
                                                          "persist": True, "_disabled_": "@is_not_rank0"}})
    bar = parser.get_parsed_content("bar")
    engine = Engine(lambda e, b: {"loss": 1.0})
    bar.attach(engine, output_transform=lambda o: o)
    engine.run([0] * 5, max_epochs=1)
    assert "5/5" in capsys.readouterr().err
    parser["is_not_rank0"] = True
    parser.parse()
    assert parser.get_parsed_content("bar") is None
