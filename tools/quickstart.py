"""Quickstart: train busi_ultrasound_classification with DRD and against a vanilla student.

Runs the real bundle commands (``python -m monai.bundle run training ...``, evaluation on the held-out
test split, TorchScript export) and prints a table measured in this run.

With no dataset and no foundation-model weights (the default, and always the case offline) it uses
an embedded default that is SYNTHETIC end to end:
  * a synthetic ultrasound-like dataset in BUSI's on-disk layout (generated here), and
  * a stand-in teacher (a MONAI ResNet, not a foundation model) pre-trained here on a larger,
    separately generated synthetic pre-training task (six lesion-outline families).
Pass ``--dataset_dir`` (a BUSI copy) and ``--teacher_checkpoint`` (the official PMC-CLIP
``image_encoder(resnet50).pth``) to run on real data with the real teacher.

Usage:
    python tools/quickstart.py [--workdir demo_output] [--epochs 30] [--seed 0]
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "busi_ultrasound_classification"


def _log(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def pretrain_standin_teacher(
    output_file: Path, n_images: int = 3000, size: int = 64, epochs: int = 4, seed: int = 0
) -> dict:
    """Pre-train the stand-in teacher on the synthetic six-family outline task and save it in the
    stand-in checkpoint format (flat MONAI ResNet state dict).

    Returns:
        ``{"accuracy": held-out pre-training accuracy, "seconds": wall time, "sha256": digest}``.
    """
    import torch

    from drd_components.data.synthetic import PRETRAIN_CLASSES, synthetic_pretraining_set
    from drd_components.teachers import ResNetStandInTeacher, sha256sum

    torch.manual_seed(seed)
    start = time.perf_counter()
    images, labels = synthetic_pretraining_set(n_images + 500, size=size, seed=seed + 1000)
    x_train, y_train = torch.from_numpy(images[:n_images]), torch.from_numpy(labels[:n_images])
    x_val, y_val = torch.from_numpy(images[n_images:]), torch.from_numpy(labels[n_images:])
    teacher = ResNetStandInTeacher(spatial_dims=2, in_channels=1)
    net = teacher.net
    net.fc = torch.nn.Linear(256, len(PRETRAIN_CLASSES))
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (n_images // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    prep = teacher.preprocessing
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n_images, generator=gen)
        for i in range(n_images // 32):
            idx = order[i * 32 : (i + 1) * 32]
            xb = x_train[idx]
            if torch.rand(1, generator=gen) < 0.5:
                xb = xb.flip(-1)
            loss = torch.nn.functional.cross_entropy(net(prep(xb)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(prep(x_val)).argmax(1) == y_val).float().mean())
        _log(f"  teacher pre-training epoch {epoch + 1}/{epochs}: loss {float(loss):.3f}, held-out accuracy {acc:.3f}")
    output_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_file.with_name(output_file.name + ".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, output_file)
    return {"accuracy": acc, "seconds": time.perf_counter() - start, "sha256": sha256sum(output_file)}


def _bundle(config_files: list[str], overrides: dict, run_id: str | None = None, log_file: Path | None = None) -> str:
    files = "[" + ",".join(f"'{BUNDLE / 'configs' / c}'" for c in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", files, "--bundle_root", str(BUNDLE)]
    cmd += ["--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--logging_file", str(BUNDLE / "configs" / "logging.conf")]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, env=env)
    text = proc.stdout + proc.stderr
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(text)
    if proc.returncode != 0:
        raise SystemExit(f"bundle command failed: {' '.join(cmd)}\n{text[-3000:]}")
    return text


def _epoch_times(log: str) -> list[float]:
    times = []
    for line in log.splitlines():
        if " time: " in line and "Epoch " in line and line.rstrip().endswith(" s"):
            times.append(float(line.rsplit(" time: ", 1)[1][:-2]))
    return times


def _metrics(eval_dir: Path) -> dict[str, float]:
    out = {}
    with open(eval_dir / "metrics.csv") as f:
        for row in csv.reader(f):
            if len(row) >= 2:
                out[row[0]] = float(row[1])
    return out


def main(
    workdir: str = "demo_output",
    epochs: int = 30,
    seed: int = 0,
    image_size: int = 64,
    n_per_class: int = 100,
    dataset_dir: str | None = None,
    teacher_checkpoint: str | None = None,
    teacher_sha256: str = "",
    pretrain_images: int = 3000,
    pretrain_epochs: int = 4,
) -> None:
    """Run the quickstart and print the comparison table (also saved to ``<workdir>/results.json``).

    Args:
        workdir: folder for everything this run writes (created; nothing is written elsewhere).
        epochs: training epochs for both students.
        seed: seed of data generation, splits and training.
        image_size: student input size (the real bundle uses 224).
        n_per_class: synthetic images per class (ignored with ``dataset_dir``).
        dataset_dir: a real BUSI copy; default: synthetic data.
        teacher_checkpoint: the official PMC-CLIP image encoder; default: synthetic stand-in teacher.
        teacher_sha256: expected digest of ``teacher_checkpoint``.
        pretrain_images: synthetic pre-training set size for the stand-in teacher.
        pretrain_epochs: stand-in pre-training epochs.
    """
    t0 = time.perf_counter()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    synthetic_data = dataset_dir is None
    synthetic_teacher = teacher_checkpoint is None
    results: dict = {"synthetic_data": synthetic_data, "synthetic_teacher": synthetic_teacher}

    if synthetic_data:
        from drd_components.data.synthetic import write_synthetic_busi

        dataset_dir = str(write_synthetic_busi(work / "synthetic_busi", n_per_class, image_size, seed))
        _log(f"SYNTHETIC dataset ({3 * n_per_class} generated ultrasound-like images, BUSI layout): {dataset_dir}")
        # few labels for training, a large held-out test split
        split = {"val_fraction": 0.2, "test_fraction": 0.6}
    else:
        _log(f"dataset: {dataset_dir}")
        split = {}
    configs = ["train.json"]
    if synthetic_teacher:
        ckpt = work / "standin_teacher.pt"
        _log(f"SYNTHETIC stand-in teacher: pre-training a MONAI ResNet on {pretrain_images} generated images "
             "(six lesion-outline families; not a foundation model)")
        info = pretrain_standin_teacher(ckpt, pretrain_images, image_size, pretrain_epochs, seed)
        results["teacher_pretraining"] = info
        teacher_checkpoint, teacher_sha256 = str(ckpt), info["sha256"]
        configs.append("teacher_standin.json")
    common = {
        "dataset_dir": dataset_dir,
        "image_size": [image_size, image_size],
        "seed": seed,
        "split_seed": seed,
        "num_workers": 0,
        **split,
    }
    runs = {}
    for method, extra_cfg in (("DRD", []), ("vanilla", ["train_vanilla.json"])):
        out = work / method.lower()
        _log(f"training the {method} student for {epochs} epochs (bundle command, log: {out / 'train.log'})")
        start = time.perf_counter()
        log = _bundle(
            configs + extra_cfg,
            dict(common, output_dir=str(out), num_epochs=epochs, batch_size=16,
                 teacher_checkpoint=teacher_checkpoint, teacher_sha256=teacher_sha256),
            run_id="training",
            log_file=out / "train.log",
        )
        train_seconds = time.perf_counter() - start
        _bundle(["train.json", "evaluate.json"], dict(common, output_dir=str(out)), log_file=out / "evaluate.log")
        m = _metrics(out / "eval")
        times = _epoch_times(log)
        runs[method] = {
            "test_accuracy": m.get("test_accuracy"),
            "test_macro_f1": m.get("test_macro_f1"),
            "train_seconds": train_seconds,
            "epoch_seconds_median": sorted(times)[len(times) // 2] if times else None,
        }
        _log(f"  {method}: test accuracy {runs[method]['test_accuracy']:.4f}")
    results["runs"] = runs

    ts_path = work / "drd" / "model.ts"
    _log(f"exporting the DRD student to TorchScript: {ts_path}")
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts_path),
         "--ckpt_file", str(work / "drd" / "model.pt"), "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
         "--config_file", str(BUNDLE / "configs" / "inference.json"), "--bundle_root", str(BUNDLE)],
        cwd=BUNDLE, check=True, capture_output=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    import torch

    scripted = torch.jit.load(str(ts_path))
    probe = scripted(torch.rand(1, 1, image_size, image_size))
    results["export"] = {"torchscript": str(ts_path), "output_shape": list(probe.shape)}
    results["wall_seconds"] = time.perf_counter() - t0
    (work / "results.json").write_text(json.dumps(results, indent=2))

    label = "SYNTHETIC data, SYNTHETIC stand-in teacher" if synthetic_data and synthetic_teacher else (
        "SYNTHETIC data" if synthetic_data else ("SYNTHETIC stand-in teacher" if synthetic_teacher else "real data"))
    d, v = runs["DRD"], runs["vanilla"]
    print()
    print(f"Results on the held-out test split ({label}; seed {seed}, {epochs} epochs, {image_size}px):")
    print()
    print("| student (ResNet18) | test accuracy | test macro-F1 | median epoch time (s) |")
    print("|---|---|---|---|")
    for name, r in (("DRD", d), ("vanilla", v)):
        print(f"| {name} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | {r['epoch_seconds_median']:.2f} |")
    if d["epoch_seconds_median"] and v["epoch_seconds_median"]:
        print(f"\nDRD / vanilla epoch time: {d['epoch_seconds_median'] / v['epoch_seconds_median']:.2f}x")
    if synthetic_teacher:
        print(f"stand-in teacher held-out pre-training accuracy: {results['teacher_pretraining']['accuracy']:.4f}")
    print(f"TorchScript student: {ts_path} (output {results['export']['output_shape']})")
    print(f"total wall time: {results['wall_seconds']:.0f} s; all outputs under {work}")


if __name__ == "__main__":
    fire.Fire(main)
