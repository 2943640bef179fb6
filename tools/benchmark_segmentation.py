"""Measure the segmentation bundles: Dice after a short CPU run (vanilla vs DRD), time per epoch, and
the peak memory of one training step (DRD vs vanilla), including the 96^3 UNet3D case.

Every number is measured by running the bundles' own configs (``python -m monai.bundle run``) or
their parsed components, on the real data under ``--data_root`` (``busi/``, ``ACDC/``) with the
random-weight stand-in teacher (``configs/teacher_standin.json``): not a foundation model, so the
Dice gap says nothing about what MedSAM/SAT would bring, only what DRD costs and that it trains.

Memory is the growth of the process's resident set during one training step, measured in a fresh
subprocess per configuration: glibc is told to serve large blocks with ``mmap`` (so freed tensors
leave the resident set), a warm-up step runs first (optimizer state, oneDNN caches), then the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs``) and read after the measured step. Parameters,
gradients and optimizer state that exist before the step are not counted; everything the step
allocates (activations kept for backward, teacher features, projector and CKA buffers, gradients'
temporaries) is.

Usage::

    python tools/benchmark_segmentation.py dice --bundle busi_ultrasound_segmentation --data_root ../shared/data
    python tools/benchmark_segmentation.py dice --bundle cardiac_mri_segmentation --data_root ../shared/data
    python tools/benchmark_segmentation.py memory --bundle cardiac_mri_segmentation
    python tools/benchmark_segmentation.py memory_unet96
    python tools/benchmark_segmentation.py all --data_root ../shared/data --output_dir bench_out

PyTorch runs with ``--threads`` threads (default 1; on a shared machine two busy OpenMP threads can be
an order of magnitude slower than one).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"

#: short-run settings per bundle (the integration tests' settings): real data, small sizes, few epochs.
PRESETS: dict[str, dict] = {
    "busi_ultrasound_segmentation": {
        "dataset": "busi",
        "spatial_dims": 2,
        "dice_key": "val_dice",
        "test_key": "test_dice",
        "overrides": {
            "image_size": [64, 64],
            "network_def#patch_size": 8,
            "max_per_class": 100,
            "num_epochs": 8,
            "batch_size": 16,
            "learning_rate": 0.001,
            "num_workers": 1,
        },
    },
    "cardiac_mri_segmentation": {
        "dataset": "ACDC",
        "spatial_dims": 3,
        "dice_key": "val_mean_dice",
        "test_key": "test_mean_dice",
        "overrides": {
            "spacing": [4.0, 4.0, 10.0],
            "patch_size": [32, 32, 8],
            "unet_channels": [16, 32, 64, 128],
            "unet_strides": [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
            "unet_kernels": [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]],
            "max_patients_per_group": 4,
            "num_epochs": 12,
            "val_interval": 1,
            "batch_size": 2,
            "learning_rate": 0.003,
            "checkpoint_hybrid": False,
            "num_workers": 1,
        },
    },
}


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")


def _bundle_cmd(bundle: str, configs: list[str], overrides: dict, run_id: str | None = None) -> list[str]:
    root = BUNDLES / bundle
    files = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", files, "--bundle_root", str(root), "--meta_file", "configs/metadata.json"]
    cmd += ["--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


def _run(cmd: list[str], cwd: Path, threads: int, log_file: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(threads))
    log = proc.stdout + proc.stderr
    log_file.write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({' '.join(cmd)}), see {log_file}:\n{log[-3000:]}")
    return log


def _curve(log: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"Epoch\[\d+\] Metrics -- [^\n]*?\b{key}: ([0-9.]+)", log)]


def _epoch_times(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"Epoch \d+ time: ([0-9.]+) s", log)]


def _metrics_csv(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        k, v = line.split(",")[:2]
        out[k] = float(v)
    return out


def _standin_teacher(path: Path, spatial_dims: int) -> Path:
    import torch

    from drd_components.teachers.standin import ResNetStandInTeacher

    torch.manual_seed(0)
    teacher = ResNetStandInTeacher(spatial_dims=spatial_dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.net.state_dict(), path)
    return path


def dice(
    bundle: str = "busi_ultrasound_segmentation",
    data_root: str | None = None,
    output_dir: str | None = None,
    threads: int = 1,
    seed: int = 0,
    epochs: int | None = None,
) -> dict:
    """Train vanilla and DRD with the same short settings and seed, evaluate both on the test split.

    Args:
        bundle: ``busi_ultrasound_segmentation`` or ``cardiac_mri_segmentation``.
        data_root: folder holding ``busi/`` and ``ACDC/`` (default: ``$DRD_DATA_ROOT``).
        output_dir: where runs and logs go (default: a temporary folder).
        threads: PyTorch threads per run.
        seed: ``seed`` and ``split_seed`` of both runs.
        epochs: override the preset's number of epochs.

    Returns:
        per mode: validation Dice per epoch, best/last validation Dice, test metrics, epoch times.
    """
    preset = PRESETS[bundle]
    root = Path(data_root or os.environ.get("DRD_DATA_ROOT", "")) / preset["dataset"]
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: pass --data_root (the folder holding {preset['dataset']}/).")
    out = Path(output_dir or tempfile.mkdtemp(prefix="bench_seg_")) / bundle
    out.mkdir(parents=True, exist_ok=True)
    teacher = _standin_teacher(out / "standin_teacher.pt", preset["spatial_dims"])
    overrides = dict(preset["overrides"], dataset_dir=str(root), seed=seed, split_seed=seed)
    if epochs is not None:
        overrides["num_epochs"] = epochs
    results = {}
    for mode, configs in (("vanilla", ["train.json", "train_vanilla.json"]), ("drd", ["train.json", "teacher_standin.json"])):
        run_dir = out / mode
        ov = dict(overrides, output_dir=str(run_dir))
        if mode == "drd":
            ov["teacher_checkpoint"] = str(teacher)
        start = time.perf_counter()
        log = _run(_bundle_cmd(bundle, configs, ov, "training"), BUNDLES / bundle, threads, out / f"{mode}_train.log")
        wall = time.perf_counter() - start
        eval_ov = {k: v for k, v in ov.items() if k != "teacher_checkpoint"}
        _run(_bundle_cmd(bundle, ["train.json", "evaluate.json"], eval_ov), BUNDLES / bundle, threads, out / f"{mode}_eval.log")
        curve = _curve(log, preset["dice_key"])
        times = _epoch_times(log)
        results[mode] = {
            "val_dice_per_epoch": curve,
            "val_dice_first": curve[0],
            "val_dice_best": max(curve),
            "val_dice_last": curve[-1],
            "test": _metrics_csv(run_dir / "eval" / "metrics.csv"),
            "epoch_times_s": times,
            "mean_epoch_time_s": sum(times[1:]) / max(len(times) - 1, 1),
            "train_wall_s": wall,
        }
        print(f"[{bundle}] {mode}: val {preset['dice_key']} {curve}, test {results[mode]['test']}, "
              f"epoch {results[mode]['mean_epoch_time_s']:.1f} s", flush=True)
    results["epoch_time_ratio_drd_over_vanilla"] = results["drd"]["mean_epoch_time_s"] / results["vanilla"]["mean_epoch_time_s"]
    (out / "dice.json").write_text(json.dumps(results, indent=1))
    return results


# ------------------------------------------------------------------------------------------------
# memory: one training step in a fresh process
# ------------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _measure_trainer(trainer, warmup: bool) -> dict:
    """Run the trainer for (1 warm-up +) 1 measured iteration; the peak RSS growth of the measured one."""
    from ignite.engine import Events

    measured = 2 if warmup else 1
    record: dict = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine):
        if engine.state.iteration == measured:
            _reset_peak()
            record["rss_before_mib"] = _rss_mib()
            record["t0"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _end(engine):
        if engine.state.iteration == measured:
            record["step_s"] = time.perf_counter() - record.pop("t0")
            record["peak_mib"] = _hwm_mib()
            record["step_peak_growth_mib"] = record["peak_mib"] - record["rss_before_mib"]

    trainer.run()
    return record


def _synthetic_batch(shape: list[int], num_classes: int, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(shape[0], 1, *shape[2:])
    return {
        "image": torch.rand(*shape, generator=g),
        "label": torch.randint(0, num_classes, (shape[0], 1, *shape[2:]), generator=g).float(),
        "mask": mask,
    }


def _step(bundle: str, mode: str, overrides_json: str | dict, warmup: bool = True) -> None:
    """(child process) Build the bundle's components from its configs and measure one step."""
    import torch
    from monai.bundle import ConfigWorkflow
    from monai.engines import SupervisedTrainer

    from drd_components.engines.drd_trainer import DRDTrainer

    overrides = overrides_json if isinstance(overrides_json, dict) else json.loads(overrides_json)
    preset = PRESETS[bundle]
    root = BUNDLES / bundle
    with tempfile.TemporaryDirectory() as tmp:
        teacher_file = _standin_teacher(Path(tmp) / "teacher.pt", preset["spatial_dims"])
        wf = ConfigWorkflow(config_file=[str(root / "configs/train.json"), str(root / "configs/teacher_standin.json")],
                            workflow_type=None, logging_file=False, bundle_root=str(root), teacher_checkpoint=str(teacher_file),
                            device="$torch.device('cpu')", **overrides)
        wf.initialize()
        p = wf.parser
        torch.manual_seed(0)
        net = p.get_parsed_content("network")
        bs = p.get_parsed_content("batch_size")
        if preset["spatial_dims"] == 2:
            shape = [bs, 1] + list(p.get_parsed_content("image_size"))
        else:  # batch_size volumes x samples_per_volume random patches
            shape = [bs * p.get_parsed_content("samples_per_volume"), 1] + list(p.get_parsed_content("patch_size"))
        batch = _synthetic_batch(shape, p.get_parsed_content("num_classes"))
        loader = [batch]
        if mode == "drd":
            trainer = DRDTrainer(device="cpu", max_epochs=2 if warmup else 1, epoch_length=1, train_data_loader=loader,
                                 network=net, optimizer=p.get_parsed_content("optimizer"), loss_function=p.get_parsed_content("loss"),
                                 teacher=p.get_parsed_content("teacher"), projectors=p.get_parsed_content("projectors"),
                                 kl_mask_key="mask")
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
            trainer = SupervisedTrainer(device="cpu", max_epochs=2 if warmup else 1, epoch_length=1, train_data_loader=loader,
                                        network=net, optimizer=opt, loss_function=p.get_parsed_content("task_loss"))
        rec = _measure_trainer(trainer, warmup)
        rec.update(bundle=bundle, mode=mode, batch_shape=shape)
        print("RESULT " + json.dumps(rec), flush=True)


def _child(args: list[str], threads: int) -> dict:
    env = _env(threads)
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # large blocks via mmap: freed tensors leave the RSS
    proc = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement failed ({args}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def memory(bundle: str = "cardiac_mri_segmentation", threads: int = 1, preset_sizes: bool = True, **overrides) -> dict:
    """Peak memory growth of one DRD step vs one vanilla step with the bundle's components.

    Args:
        bundle: the bundle.
        threads: PyTorch threads.
        preset_sizes: use the short-run sizes of :data:`PRESETS` (else the bundle defaults).
        overrides: further config overrides (``--patch_size [..]`` ...).
    """
    ov = dict(PRESETS[bundle]["overrides"]) if preset_sizes else {}
    ov.pop("num_workers", None)
    ov.update(overrides)
    out = {}
    for mode in ("vanilla", "drd"):
        out[mode] = _child(["_step", "--bundle", bundle, "--mode", mode, "--overrides_json", json.dumps(ov)], threads)
        print(f"[{bundle}] {mode}: {out[mode]}", flush=True)
    out["ratio_drd_over_vanilla"] = out["drd"]["step_peak_growth_mib"] / out["vanilla"]["step_peak_growth_mib"]
    return out


def _step_unet96(mode: str, cka: str = "sample", checkpoint_hybrid: bool = True, size: int = 96, batch: int = 2,
                 warmup: bool = False) -> None:
    """(child process) One training step of the default UNet3D (16-256 channels) on a ``size^3`` batch."""
    import torch
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss

    from drd_components.engines.drd_trainer import DRDTrainer
    from drd_components.losses.cka import CKALoss
    from drd_components.losses.drd_loss import DRDLoss
    from drd_components.networks.reprogramming import ReprogrammingModule
    from drd_components.networks.students.unet import StagedUNet3D
    from drd_components.teachers.standin import ResNetStandInTeacher

    torch.manual_seed(0)
    net = StagedUNet3D(1, 3, checkpoint_hybrid=checkpoint_hybrid)
    task = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    loader = [_synthetic_batch([batch, 1, size, size, size], 3)]
    if mode == "drd":
        teacher = ResNetStandInTeacher(spatial_dims=3, block_inplanes=(32, 64, 128, 256))
        proj = ReprogrammingModule.from_models(teacher, net, [2, 1, size, size, size], norm=("instance", {"affine": True}))
        cka_loss = {"full": CKALoss(), "pool": CKALoss(pool_size=8), "sample": CKALoss(spatial_samples=4096)}[cka]
        opt = torch.optim.AdamW(list(net.parameters()) + list(proj.parameters()), lr=1e-3)
        trainer = DRDTrainer(device="cpu", max_epochs=2 if warmup else 1, epoch_length=1, train_data_loader=loader, network=net,
                             optimizer=opt, loss_function=DRDLoss(task, cka_loss), teacher=teacher, projectors=proj,
                             kl_mask_key="mask")
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        trainer = SupervisedTrainer(device="cpu", max_epochs=2 if warmup else 1, epoch_length=1, train_data_loader=loader,
                                    network=net, optimizer=opt, loss_function=task)
    rec = _measure_trainer(trainer, warmup)
    rec.update(mode=mode, cka=cka if mode == "drd" else None, checkpoint_hybrid=checkpoint_hybrid if mode == "drd" else None,
               size=size, batch=batch)
    print("RESULT " + json.dumps(rec), flush=True)


def memory_unet96(threads: int = 1, size: int = 96, batch: int = 2, warmup: bool = False,
                  variants: str = "sample+ckpt,pool+ckpt,full+ckpt,sample+nockpt") -> dict:
    """Memory of one DRD step of the default UNet3D on a ``size^3`` batch against the student's own step.

    Args:
        threads: PyTorch threads.
        size: patch side.
        batch: batch size.
        warmup: run a warm-up step before the measured one (twice the time).
        variants: comma-separated ``<cka>+<ckpt|nockpt>`` with cka in ``full``, ``pool`` (8^3),
            ``sample`` (4096 positions).

    Returns:
        the vanilla record, one record per variant and its ratio to vanilla.
    """
    common = ["--size", str(size), "--batch", str(batch), "--warmup", str(warmup)]
    out = {"vanilla": _child(["_step_unet96", "--mode", "vanilla"] + common, threads)}
    print(f"[unet3d {size}^3 x{batch}] vanilla: {out['vanilla']}", flush=True)
    base = out["vanilla"]["step_peak_growth_mib"]
    for v in variants.split(","):
        cka, ck = v.split("+")
        rec = _child(["_step_unet96", "--mode", "drd", "--cka", cka, "--checkpoint_hybrid", str(ck == "ckpt")] + common, threads)
        rec["ratio_to_vanilla"] = rec["step_peak_growth_mib"] / base
        out[v] = rec
        print(f"[unet3d {size}^3 x{batch}] drd {v}: {rec}", flush=True)
    return out


def run_all(data_root: str | None = None, output_dir: str = "bench_segmentation", threads: int = 1) -> dict:
    """Every measurement above; writes ``<output_dir>/results.json``."""
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"threads": threads}
    for bundle in PRESETS:
        results[bundle] = {"dice": dice(bundle, data_root, str(out_dir), threads), "memory": memory(bundle, threads)}
    results["unet3d_96"] = memory_unet96(threads)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    fire.Fire(
        {"dice": dice, "memory": memory, "memory_unet96": memory_unet96, "all": run_all, "_step": _step, "_step_unet96": _step_unet96}
    )
