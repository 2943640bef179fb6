"""Reliability of training: NaN losses, interruptions (SIGKILL / SIGTERM), resuming, determinism.

Every bundle run here is the BUSI classification bundle on tiny synthetic data (32 px, 8 images per
class, stand-in teacher and student at 1/8 width) with the resumable overlay of
:func:`resumable_overlay` (the handlers of ``drd_components.handlers.resume`` / ``.determinism``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from drd_components.data.synthetic import write_synthetic_busi
from drd_components.handlers.determinism import ReseedEachEpoch, epoch_seed
from drd_components.handlers.resume import AtomicCheckpointSaver, ResumeFromLatestCheckpoint, find_checkpoints
from drd_components.teachers.checkpoint import CheckpointError
from tests.bundle_utils import BUNDLES, write_standin_teacher

BUNDLE = BUNDLES / "busi_ultrasound_classification"
CONFIGS = BUNDLE / "configs"
NUM_EPOCHS = 4
SMALL = {"teacher_def#block_inplanes": [8, 16, 32, 64], "network_def#block_inplanes": [8, 16, 32, 64]}


def resumable_overlay(train_config: dict) -> dict:
    """The overlay that makes a bundle resumable, built from its ``train.json`` (the snippet in docs/reliability.md)."""
    handlers = list(train_config["train"]["handlers"])
    idx = next(i for i, h in enumerate(handlers) if h.get("file_prefix") == "resume")
    saver = dict(handlers[idx], _target_="drd_components.handlers.resume.AtomicCheckpointSaver",
                 save_dict="@train_save_dict", engine_key="trainer")
    handlers[idx] = saver
    handlers = [
        {"_target_": "drd_components.handlers.resume.ResumeFromLatestCheckpoint", "ckpt_dir": "@ckpt_dir",
         "load_dict": "@train_save_dict", "engine_key": "trainer"},
        {"_target_": "drd_components.handlers.determinism.ReseedEachEpoch", "seed": "@seed",
         "randomizable": "@train#dataset"},
    ] + handlers
    vidx = next(i for i, h in enumerate(train_config["validate"]["handlers"]) if h.get("save_key_metric"))
    return {
        "train_save_dict": {"model": "@network", "projectors": "@projectors", "optimizer": "@optimizer",
                            "lr_scheduler": "@lr_scheduler", "validation": "@validation_progress"},
        "validation_progress": {"_target_": "drd_components.handlers.resume.ValidationProgress",
                                "evaluator": "@validate#evaluator", "best_model_saver": f"@validate#handlers#{vidx}"},
        "train#handlers": handlers,
        f"validate#handlers#{vidx}#_target_": "drd_components.handlers.resume.AtomicCheckpointSaver",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    data = write_synthetic_busi(tmp / "busi", n_per_class=8, size=32, seed=1)
    torch.manual_seed(0)  # the same stand-in teacher in every session
    teacher = write_standin_teacher(tmp / "teacher.pt", block_inplanes=(8, 16, 32, 64))
    (tmp / "small.json").write_text(json.dumps(SMALL))
    (tmp / "resumable.json").write_text(json.dumps(resumable_overlay(json.loads((CONFIGS / "train.json").read_text()))))
    # slows epochs >= 3 (no effect on the numbers) so that a kill after the epoch-2 checkpoint lands mid-epoch
    slow = "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, " \
           "lambda e: time.sleep(0.4) if e.state.epoch >= 3 else None)"
    imports = json.loads((CONFIGS / "train.json").read_text())["imports"] + ["$import time"]
    (tmp / "slow.json").write_text(json.dumps({"imports": imports, "training": [slow, "$@train#trainer.run()"]}))
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "teacher_standin.json"), str(tmp / "small.json"),
             str(tmp / "resumable.json")]
    overrides = {"dataset_dir": str(data), "image_size": [32, 32], "num_workers": 0, "num_epochs": NUM_EPOCHS,
                 "batch_size": 4, "teacher_checkpoint": str(teacher)}
    return {"tmp": tmp, "files": files, "overrides": overrides}


def _command(setup: dict, out: Path, extra_files=()) -> list[str]:
    files = "[" + ",".join(f"'{f}'" for f in setup["files"] + list(extra_files)) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files,
           "--bundle_root", str(BUNDLE), "--meta_file", str(CONFIGS / "metadata.json"),
           "--logging_file", str(CONFIGS / "logging.conf"), "--output_dir", str(out)]
    for key, value in setup["overrides"].items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


def _start(setup: dict, out: Path, log: Path, extra_files=()) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(_command(setup, out, extra_files), cwd=BUNDLE, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _val_metrics(log: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"Epoch\[(\d+)\] Metrics -- val_accuracy: ([\d.]+)", log)}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    out = {}
    for part in ("model", "projectors"):
        out.update({f"{part}.{k}": v for k, v in state[part].items()})
    for i, s in state["optimizer"]["state"].items():
        out.update({f"optimizer.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


@pytest.fixture(scope="module")
def runs(setup):
    """Two CLI runs killed (SIGKILL, SIGTERM) after their epoch-2 checkpoint appeared, resumed in-process,
    and one uninterrupted in-process run with the same seed."""
    tmp = setup["tmp"]
    killed = {sig: _start(setup, tmp / sig.name, tmp / f"{sig.name}.log", [str(tmp / "slow.json")])
              for sig in (signal.SIGKILL, signal.SIGTERM)}
    full = _train_in_process(setup, tmp / "full", num_epochs=NUM_EPOCHS)  # meanwhile
    codes = {}
    deadline = time.time() + 600
    while len(codes) < len(killed) and time.time() < deadline:
        for sig, proc in killed.items():
            if sig not in codes and (tmp / sig.name / "resume_checkpoint_epoch=2.pt").exists():
                proc.send_signal(sig)
                codes[sig] = proc.wait(60)
            elif sig not in codes and proc.poll() is not None:
                pytest.fail(f"run to be killed ended early:\n{(tmp / f'{sig.name}.log').read_text()[-3000:]}")
        time.sleep(0.02)
    before = {sig: sorted(p.name for p in (tmp / sig.name).glob("resume_*.pt")) for sig in killed}
    resumed = {sig: _train_in_process(setup, tmp / sig.name, num_epochs=NUM_EPOCHS) for sig in killed}
    return {"returncodes": codes, "before": before, "full": full, "resumed": resumed}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_result(setup, runs, sig):
    tmp = setup["tmp"]
    assert runs["returncodes"][sig] == -sig  # it really died by the signal, before finishing
    assert runs["before"][sig] == ["resume_checkpoint_epoch=2.pt"]  # killed in epoch 3: only epoch 2 on disk
    full, resumed = runs["full"], runs["resumed"][sig]
    epoch_length = full["epoch_length"]
    assert resumed["resumed_from"] == (2, 2 * epoch_length)  # epoch, iteration restored from the epoch-2 file
    assert full["resumed_from"] is None and sorted(full["val"]) == list(range(1, NUM_EPOCHS + 1))
    assert sorted(resumed["val"]) == [3, 4]  # epochs 1-2 were not trained again
    killed_log = _val_metrics((tmp / f"{sig.name}.log").read_text())
    assert {**killed_log, **{k: round(v, 4) for k, v in resumed["val"].items()}} == {
        k: round(v, 4) for k, v in full["val"].items()}
    assert resumed["val"] == {k: full["val"][k] for k in (3, 4)}
    final = f"resume_checkpoint_epoch={NUM_EPOCHS}.pt"
    diff = _max_abs_diff(_tensors(tmp / "full" / final), _tensors(tmp / sig.name / final))
    print(f"{sig.name}: val_accuracy full {full['val']} resumed {resumed['val']}; max |w diff| = {diff}")
    assert diff == 0.0
    assert _max_abs_diff(full["weights"], resumed["weights"]) == 0.0
    full_state, resumed_state = (torch.load(d / final, weights_only=True) for d in (tmp / "full", tmp / sig.name))
    assert full_state["trainer"]["iteration"] == resumed_state["trainer"]["iteration"] == NUM_EPOCHS * epoch_length
    assert full_state["lr_scheduler"] == resumed_state["lr_scheduler"]
    assert full_state["validation"] == resumed_state["validation"]
    best_full = torch.load(tmp / "full" / "model.pt", weights_only=True)
    best_resumed = torch.load(tmp / sig.name / "model.pt", weights_only=True)
    assert _max_abs_diff(best_full, best_resumed) == 0.0


def _workflow(setup: dict, out: Path, seed: int = 0, num_epochs: int = 2):
    """A ConfigWorkflow of the resumable tiny bundle, initialised."""
    from monai.bundle import ConfigWorkflow

    overrides = dict(setup["overrides"], output_dir=str(out), seed=seed, num_epochs=num_epochs)
    wf = ConfigWorkflow(config_file=setup["files"], workflow_type="train", bundle_root=str(BUNDLE), **overrides)
    wf.initialize()
    return wf


def _train_in_process(setup: dict, out: Path, seed: int = 0, num_epochs: int = 2) -> dict:
    """Train in this process with one thread (as the CLI runs); validation metrics per epoch and final weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wf = _workflow(setup, out, seed, num_epochs)
        trainer = wf.parser.get_parsed_content("train#trainer")
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        resume = next(h for h in wf.parser.get_parsed_content("train#handlers")
                      if isinstance(h, ResumeFromLatestCheckpoint))
        val: dict[int, float] = {}
        train: dict[int, float] = {}
        evaluator.add_event_handler(Events.COMPLETED, lambda e: val.update({e.state.epoch: e.state.metrics["val_accuracy"]}))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: train.update({e.state.epoch: e.state.metrics["train_accuracy"]}))
        resumed_from = []
        trainer.add_event_handler(Events.STARTED, lambda e: resumed_from.append((e.state.epoch, e.state.iteration)))
        wf.run()
        weights = {k: v.clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
        return {"val": val, "train": train, "weights": weights, "epoch_length": trainer.state.epoch_length,
                "resumed_from": resumed_from[0] if resume.resumed_from is not None else None}
    finally:
        torch.set_num_threads(threads)


def test_same_seed_same_metrics_and_weights(setup, tmp_path):
    a = _train_in_process(setup, tmp_path / "a", seed=0)
    b = _train_in_process(setup, tmp_path / "b", seed=0)
    c = _train_in_process(setup, tmp_path / "c", seed=1)
    assert a["val"] == b["val"] and a["train"] == b["train"] and len(a["val"]) == 2
    assert _max_abs_diff(a["weights"], b["weights"]) == 0.0
    assert _max_abs_diff(a["weights"], c["weights"]) > 0.0  # the seed matters, so the equality above is not vacuous


def test_nan_loss_stops_training_and_keeps_last_good_checkpoints(setup, tmp_path):
    out = tmp_path / "out"
    wf = _workflow(setup, out, num_epochs=4)
    trainer = wf.parser.get_parsed_content("train#trainer")
    snapshot: dict[str, bytes] = {}

    def take_snapshot(engine):  # registered after the savers, so it sees what epoch 2 wrote
        snapshot.update({p.name: p.read_bytes() for p in out.glob("*.pt")})

    def poison(engine):
        if engine.state.epoch == 3 and (engine.state.iteration - 1) % engine.state.epoch_length == 1:
            engine.state.batch["image"].fill_(float("nan"))  # 2nd iteration of epoch 3

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), take_snapshot)
    trainer.add_event_handler(Events.ITERATION_STARTED, poison)
    with pytest.raises(FloatingPointError, match="non-finite DRD loss at epoch 3, iteration"):
        trainer.run()  # wf.run() raises the same error wrapped by the config expression
    assert set(snapshot) == {"model.pt", "resume_checkpoint_epoch=2.pt"}
    assert {p.name: p.read_bytes() for p in out.glob("*.pt")} == snapshot  # byte-identical, nothing new
    assert not list(out.glob(".*.tmp"))


class _Box:
    def __init__(self, value: float = 0.0) -> None:
        self.w = torch.nn.Parameter(torch.tensor([value]))

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, state):
        self.w.data.copy_(state["w"])


def _engine(max_epochs: int = 3, epoch_length: int = 2):
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    return engine, list(range(epoch_length)), max_epochs


def test_atomic_saver_keeps_previous_checkpoint_when_a_write_fails(tmp_path, monkeypatch):
    """MONAI's plain CheckpointSaver deletes the old file first and writes in place; the atomic one does not."""
    from monai.handlers import CheckpointSaver

    results = {}
    for cls in (CheckpointSaver, AtomicCheckpointSaver):
        folder = tmp_path / cls.__name__
        box = _Box()
        engine, data, max_epochs = _engine()
        cls(str(folder), {"box": box, "other": _Box(1.0)}, file_prefix="resume", save_interval=1, n_saved=1,
            epoch_level=True).attach(engine)
        real_save = torch.save

        def crash_in_epoch_2(obj, f, *args, **kwargs):
            if engine.state.epoch == 2:  # the process dies half-way through writing
                (f.write(b"PK\x03\x04 partial") if hasattr(f, "write") else Path(f).write_bytes(b"PK\x03\x04 partial"))
                raise KeyboardInterrupt("killed while writing")
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            engine.run(data, max_epochs=max_epochs)
        monkeypatch.setattr(torch, "save", real_save)
        loadable = []
        for p in folder.glob("*.pt"):
            try:
                torch.load(p, weights_only=True)
                loadable.append(p.name)
            except Exception:
                pass
        results[cls.__name__] = (sorted(p.name for p in folder.iterdir()), loadable)
    names, loadable = results["AtomicCheckpointSaver"]
    assert names == ["resume_checkpoint_epoch=1.pt"] and loadable == names  # the last good file, intact
    plain_names, plain_loadable = results["CheckpointSaver"]
    assert plain_loadable == []  # why the wrapper exists: MONAI's saver leaves only a broken file


def test_resume_handler_starts_from_scratch_then_resumes_newest_complete(tmp_path, caplog):
    box = _Box()
    handler = ResumeFromLatestCheckpoint(tmp_path / "none", {"box": box})
    engine, data, _ = _engine()
    handler.attach(engine)
    with caplog.at_level("INFO"):
        engine.run(data, max_epochs=1)
    assert handler.resumed_from is None and "starts from scratch" in caplog.text

    torch.save({"box": {"w": torch.tensor([2.0])}, "trainer": {"epoch_length": 2, "max_epochs": 5, "iteration": 4}},
               tmp_path / "resume_checkpoint_epoch=2.pt")
    (tmp_path / "resume_checkpoint_epoch=3.pt").write_bytes(b"PK\x03\x04 truncated")  # newest is broken
    seen = []
    engine, data, _ = _engine()
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    handler = ResumeFromLatestCheckpoint(tmp_path, {"box": box})
    handler.attach(engine)
    engine.run(data, max_epochs=4)
    assert handler.resumed_from.name == "resume_checkpoint_epoch=2.pt"
    assert float(box.w) == 2.0 and seen == [3, 4]  # continues with epoch 3, keeps max_epochs=4
    assert [p.name for p in find_checkpoints(tmp_path)] == ["resume_checkpoint_epoch=3.pt", "resume_checkpoint_epoch=2.pt"]


@pytest.mark.parametrize(
    "content,message",
    [
        ({"box": {"w": torch.tensor([2.0])}, "trainer": {"epoch_length": 7, "max_epochs": 5, "iteration": 7}},
         "7 iterations per epoch, the data now gives 2"),
        ({"trainer": {"epoch_length": 2, "max_epochs": 5, "iteration": 2}}, r"lacks \['box'\]"),
        ({"box": {"v": torch.tensor([2.0])}, "trainer": {"epoch_length": 2, "max_epochs": 5, "iteration": 2}},
         "does not match the current objects"),
    ],
    ids=["epoch_length_changed", "missing_object", "wrong_keys"],
)
def test_resume_handler_refuses_mismatching_checkpoint(tmp_path, content, message):
    torch.save(content, tmp_path / "resume_checkpoint_epoch=1.pt")
    engine, data, _ = _engine()
    ResumeFromLatestCheckpoint(tmp_path, {"box": _BoxStrict()}).attach(engine)
    with pytest.raises(CheckpointError, match=message):
        engine.run(data, max_epochs=2)


class _BoxStrict(_Box):
    def load_state_dict(self, state):
        if set(state) != {"w"}:
            raise RuntimeError(f"unexpected keys {sorted(state)}")
        super().load_state_dict(state)


def test_reseed_each_epoch_replays_an_epoch(tmp_path):
    from monai.transforms import Compose, RandGaussianNoise

    transforms = Compose([RandGaussianNoise(prob=1.0)])
    draws: dict[int, list] = {}

    def step(engine, batch):
        draws.setdefault(engine.state.epoch, []).append(
            (torch.rand(1).item(), float(transforms(torch.zeros(1, 2, 2)).sum()))
        )

    from ignite.engine import Engine

    for start_epoch in (0, 2):  # a full run, then a "resumed" one starting at epoch 3
        engine = Engine(step)
        ReseedEachEpoch(seed=5, randomizable=transforms).attach(engine)
        if start_epoch:
            engine.add_event_handler(Events.STARTED, lambda e: e.load_state_dict(
                {"epoch": start_epoch, "max_epochs": 4, "epoch_length": 2}))
        first = {k: list(v) for k, v in draws.items()}
        draws.clear()
        engine.run([0, 1], max_epochs=4)
    assert draws[3] == first[3] and draws[4] == first[4]
    assert first[3] != first[4]
    assert epoch_seed(5, 3) != epoch_seed(5, 4) and epoch_seed(5, 3) == epoch_seed(5, 3)
