"""Benchmark DRD against the baselines on one bundle: methods x seeds x label fractions, resumable.

Usage:
    python tools/benchmark_methods.py main --output bench/busi \
        [--bundle busi_ultrasound_classification] [--dataset busi|brain_tumor_mri|bundle] \
        [--methods vanilla,linear_probe,kd,fitnet,rd,drd,drd_cache] [--seeds 3] [--fractions 0.1,1.0] \
        [--image_size 64] [--epochs 5] [--batch_size 16] [--threads 1] \
        [--teacher_checkpoint standin.pt] [--teacher_overlay teacher_standin_resnet50.json] [--cost True]

Every run trains the bundle's ``train.json`` + the teacher overlay + the method's overlay from
``tools/bundle_templates/overlays`` in its own subprocess (a clean process, so its peak RSS is
its own), evaluates the best-validation checkpoint of the deployed model on the test split and
writes ``runs/<run>/result.json``. A run whose ``result.json`` exists is not redone: the run name
holds the method, seed, fraction and a hash of everything that defines it (configs, overrides).

``python tools/benchmark_methods.py report --output DIR`` rewrites the tables from every finished run.

Outputs under ``--output``: ``runs.csv`` (every run), ``summary.md`` (mean +- std per method and
fraction, with trainable / deployed parameters, epoch time, peak memory and deployed latency at
batch 1 and 32), ``summary.png`` (test accuracy per method and fraction), and, with ``--cost``,
``cost.md`` / ``cost.json``: vanilla, DRD and cached DRD trained one after the other in one process
on the full training set, with epoch-time ratios and the peak memory of each.

Datasets: ``--dataset bundle --dataset_dir DIR`` uses the bundle's own datalist; ``busi`` uses the bundle's own stratified split (``busi_classification_datalist``);
``brain_tumor_mri`` uses the authors' Testing folder as test set and a stratified 15 % of
Training as validation. Label fractions subsample the training list per class with the run's seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = REPO_ROOT / "tools" / "bundle_templates" / "overlays"

#: method -> (overlay files, method whose checkpoint it needs, what it deploys)
METHODS: dict[str, tuple[list[str], str | None, str]] = {
    "vanilla": (["train_vanilla.json"], None, "student"),
    "linear_probe": (["train_linear_probe.json"], None, "teacher_probe"),
    "finetune": (["train_finetune.json"], None, "teacher_finetuned"),
    "lora": (["train_lora.json"], None, "teacher_lora"),
    "kd": (["train_kd.json"], "linear_probe", "student"),
    "lora_kd": (["train_lora_kd.json"], "lora", "student"),
    "fitnet": (["train_fitnet.json"], None, "student"),
    "rd": (["train_rd.json"], None, "student"),
    "drd": ([], None, "student"),
    "drd_cache": (["train_drd_cache.json"], None, "student"),
    "drd_no_cka": (["train_drd_no_cka.json"], None, "student"),
    "drd_no_kl": (["train_drd_no_kl.json"], None, "student"),
    "drd_no_hybrid": (["train_drd_no_hybrid.json"], None, "student"),
}
#: deployed kind -> (best-validation checkpoint file, attribute path inside the network it fills)
CHECKPOINTS = {
    "student": ("model.pt", ""),
    "teacher_probe": ("teacher_probe/teacher_head.pt", "head"),
    "teacher_finetuned": ("teacher_finetune/teacher_finetuned.pt", ""),
    "teacher_lora": ("teacher_lora/teacher_lora.pt", ""),
}
#: the checkpoint a dependent method reads, and the config id it is passed as
DEPENDENCY_IDS = {"linear_probe": ("teacher_probe/teacher_head.pt", "teacher_head_checkpoint"),
                  "lora": ("teacher_lora/teacher_lora.pt", "teacher_lora_checkpoint")}
DEFAULT_METHODS = "vanilla,linear_probe,finetune,lora,kd,lora_kd,fitnet,rd,drd,drd_cache"


# ----------------------------------------------------------------------------------------- data
def _stratified_take(records: list[dict], fraction: float, seed: int) -> list[dict]:
    """``fraction`` of each class (at least one per class), chosen with ``seed``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}.")
    if fraction == 1:
        return list(records)
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({int(r["label"]) for r in records}):
        group = [r for r in records if int(r["label"]) == label]
        n = max(1, int(round(fraction * len(group))))
        out += [group[i] for i in sorted(rng.permutation(len(group))[:n])]
    return out


def bundle_datalist(bundle_dir: Path, dataset_dir: str, output_dir: Path) -> tuple[dict, list[str]]:
    """The bundle's own ``datalist`` and ``class_names`` (its ``train.json``) for ``dataset_dir``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle_dir), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir)})
    return parser.get_parsed_content("datalist"), list(parser.get_parsed_content("class_names"))


def base_datalist(dataset: str, data_root: Path) -> tuple[dict, list[str]]:
    """Train/validation/test datalist and class names of a benchmark dataset (``busi``, ``brain_tumor_mri``).

    Raises:
        ValueError: for an unknown dataset.
    """
    if dataset == "busi":
        from drd_components.data import BUSI_CLASSES, busi_classification_datalist

        return busi_classification_datalist(data_root / "busi", None, 0.15, 0.15, 0), list(BUSI_CLASSES)
    if dataset == "brain_tumor_mri":
        from drd_components.data import stratified_split
        from tools.pretrain_standin import BRAIN_TUMOR_CLASSES, brain_tumor_records

        root = data_root / "brain_tumor_mri"
        parts = stratified_split(brain_tumor_records(root, "Training"), "label", {"training": 0.85, "validation": 0.15}, 0)
        return {**parts, "test": brain_tumor_records(root, "Testing")}, list(BRAIN_TUMOR_CLASSES)
    raise ValueError(f"unknown dataset '{dataset}'; expected 'busi', 'brain_tumor_mri' or 'bundle'.")


# ------------------------------------------------------------------------------------ run specs
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _config_files(bundle_dir: Path, teacher_overlay: str, method: str) -> list[str]:
    teacher = Path(teacher_overlay)
    if not teacher.is_file():
        teacher = OVERLAYS / teacher_overlay if (OVERLAYS / teacher_overlay).is_file() else bundle_dir / "configs" / teacher_overlay
    return [str(bundle_dir / "configs" / "train.json"), str(teacher)] + [str(OVERLAYS / f) for f in METHODS[method][0]]


def _contract_defaults(bundle_dir: Path, size: list[int]) -> dict:
    """Contract ids (``bundle_ids.md``) a hand-written bundle may lack; given only when absent."""
    config = json.loads((bundle_dir / "configs" / "train.json").read_text())
    defaults = {"task": "classification", "spatial_dims": 2, "train_size": size,
                "task_loss": "$torch.nn.CrossEntropyLoss()"}
    return {k: v for k, v in defaults.items() if k not in config}


# ----------------------------------------------------------------------------- one run (child)
class _PeakRSS:
    """Polls the process RSS (``/proc/self/statm``) in a thread; ``peak_mib`` is the maximum seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> _PeakRSS:
        self.start = self._rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


def _latency_ms(model, shape: list[int], batch: int, device, repeats: int) -> float:
    import torch

    x = torch.rand(batch, *shape, device=device)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _train_once(spec: dict, run_dir: Path) -> dict:
    """Train one configuration in this process; return the measurements."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    overrides = dict(spec["overrides"], output_dir=str(run_dir))
    wf = ConfigWorkflow(config_file=spec["config_files"], workflow_type="train", **overrides)
    wf.initialize()
    parser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")
    device = torch.device(parser.get_parsed_content("device"))
    epoch_times: list[float] = []
    marks: dict[str, float] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def _start(_):
        marks["start"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iter(_):
        marks["last"] = time.perf_counter()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _end(_):
        epoch_times.append(marks["last"] - marks["start"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _PeakRSS() as rss:
        wf.run()
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    seen, trainable = set(), 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                trainable += p.numel()
    result = {
        "epoch_times_s": epoch_times,
        "epoch_s": statistics.median(epoch_times[1:] or epoch_times),
        "first_epoch_s": epoch_times[0] if epoch_times else float("nan"),
        "peak_rss_mib": rss.peak_mib,
        "rss_increase_mib": rss.peak_mib - rss.start / 2**20,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable_params": trainable,
        "deployed_params": sum(p.numel() for p in network.parameters()),
    }
    wf.finalize()
    return result | {"_network": network, "_parser": parser, "_device": device}


def _evaluate(network, parser, device, datalist_test: list[dict], num_classes: int) -> dict:
    import torch
    from monai.data import DataLoader, Dataset

    preprocessing = parser.get_parsed_content("validate#preprocessing")
    loader = DataLoader(Dataset(datalist_test, transform=preprocessing), batch_size=32, num_workers=0)
    preds, labels = [], []
    network.eval()
    with torch.inference_mode():
        for batch in loader:
            preds.append(network(batch["image"].to(device)).argmax(1).cpu())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1))
    p, y = torch.cat(preds), torch.cat(labels)
    f1 = []
    for c in range(num_classes):
        tp = int(((p == c) & (y == c)).sum())
        fp, fn = int(((p == c) & (y != c)).sum()), int(((p != c) & (y == c)).sum())
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
    recall = [float(((p == c) & (y == c)).sum()) / max(int((y == c).sum()), 1) for c in range(num_classes)]
    return {"test_accuracy": float((p == y).float().mean()), "test_macro_f1": float(np.mean(f1)),
            "test_balanced_accuracy": float(np.mean(recall)), "n_test": int(len(y))}


def run_one(spec_file: str) -> None:
    """Child-process entry: train and evaluate the run described by ``spec_file``; write ``result.json``."""
    import torch

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(int(spec["threads"]))
    run_dir = Path(spec["run_dir"])
    kind = METHODS[spec["method"]][2]
    out = _train_once(spec, run_dir)
    network, parser, device = out.pop("_network"), out.pop("_parser"), out.pop("_device")
    ckpt, attr = CHECKPOINTS[kind]
    path = run_dir / ckpt
    if not path.is_file() and (run_dir / Path(ckpt).name).is_file():  # runs made before the sub-folders
        path = run_dir / Path(ckpt).name
    if path.is_file():
        target = network.get_submodule(attr) if attr else network
        target.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        out["evaluated"] = f"best validation ({ckpt})"
    else:
        out["evaluated"] = "last epoch (no best-validation checkpoint was written)"
    out.update(_evaluate(network, parser, device, spec["overrides"]["datalist"]["test"], spec["num_classes"]))
    shape = [spec["in_channels"], *spec["overrides"]["image_size"]]
    out["latency_b1_ms"] = _latency_ms(network, shape, 1, device, spec["latency_repeats"])
    out["latency_b32_ms"] = _latency_ms(network, shape, 32, device, max(1, spec["latency_repeats"] // 4))
    out["deployed"] = kind
    result = {k: spec[k] for k in ("method", "seed", "fraction", "hash")} | out
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, run_dir / "result.json")


def run_cost(spec_file: str) -> None:
    """Child-process entry: vanilla, DRD and cached DRD one after the other in this process (cost report)."""
    import torch

    specs = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(int(specs[0]["threads"]))
    report = {}
    for spec in specs:
        out = _train_once(spec, Path(spec["run_dir"]))
        for key in ("_network", "_parser", "_device"):
            out.pop(key)
        report[spec["method"]] = out
    v = report["vanilla"]["epoch_s"]
    report["ratio_drd_vs_vanilla"] = report["drd"]["epoch_s"] / v
    report["ratio_drd_cache_vs_vanilla"] = report["drd_cache"]["epoch_s"] / v
    Path(specs[0]["cost_file"]).write_text(json.dumps(report, indent=2))


# ---------------------------------------------------------------------------------- aggregation
_COLUMNS = ["method", "seed", "fraction", "test_accuracy", "test_macro_f1", "test_balanced_accuracy", "n_test",
            "trainable_params", "deployed_params", "deployed", "epoch_s", "first_epoch_s", "peak_rss_mib",
            "peak_cuda_mib", "latency_b1_ms", "latency_b32_ms", "evaluated", "hash"]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def write_reports(output: Path, results: list[dict], title: str) -> None:
    """``runs.csv``, ``summary.md`` and ``summary.png`` from the run results."""
    with open(output / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(results, key=lambda r: (r["method"], r["fraction"], r["seed"])):
            w.writerow(r)
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    fractions = sorted({r["fraction"] for r in results})
    lines = [f"# {title}", "", "Test accuracy (mean ± std over seeds; n = runs):", ""]
    lines.append("| method | deployed | " + " | ".join(f"acc @ {f:g} labels (n)" for f in fractions)
                 + f" | macro-F1 @ {max(fractions):g} | trainable params | deployed params | epoch s | peak RSS MiB"
                 + " | latency b1 ms | latency b32 ms |")
    lines.append("|" + "---|" * (len(fractions) + 9))
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        cells = []
        for fr in fractions:
            acc = [r["test_accuracy"] for r in rs if r["fraction"] == fr]
            cells.append(f"{_mean_std(acc)} ({len(acc)})")
        full = [r for r in rs if r["fraction"] == max(r2["fraction"] for r2 in rs)]

        def med(key: str, runs: list[dict] = full) -> float:
            values = [r[key] for r in runs if r.get(key) is not None]
            return statistics.median(values) if values else float("nan")

        lines.append(
            f"| {m} | {rs[0]['deployed']} | " + " | ".join(cells)
            + f" | {_mean_std([r['test_macro_f1'] for r in rs if r['fraction'] == max(fractions)])} | {_count(rs[0]['trainable_params'])}"
            + f" | {_count(rs[0]['deployed_params'])} | {med('epoch_s'):.2f} | {med('peak_rss_mib'):.0f}"
            + f" | {med('latency_b1_ms'):.1f} | {med('latency_b32_ms'):.1f} |"
        )
    lines += ["", "Cost columns are medians over the method's runs at its largest label fraction. epoch s: "
              "steady-state training epoch (first epoch excluded when there are several); peak RSS: the whole run "
              "process; latency: deployed model forward, median, on this machine under its load at the time."]
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods) + 2), 4))
    width = 0.8 / max(len(fractions), 1)
    for j, fr in enumerate(fractions):
        means, stds = [], []
        for m in methods:
            acc = [r["test_accuracy"] for r in results if r["method"] == m and r["fraction"] == fr]
            means.append(statistics.mean(acc) if acc else 0.0)
            stds.append(statistics.stdev(acc) if len(acc) > 1 else 0.0)
        ax.bar(np.arange(len(methods)) + j * width, means, width, yerr=stds, capsize=3, label=f"{fr:g} of labels")
    ax.set_xticks(np.arange(len(methods)) + width * (len(fractions) - 1) / 2)
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "summary.png", dpi=120)
    plt.close(fig)


def report(output: str, title: str = "benchmark") -> None:
    """Rewrite ``runs.csv``, ``summary.md`` and ``summary.png`` from every ``runs/*/result.json`` under ``output``
    (e.g. after several invocations with different method lists); the newest result per method/seed/fraction wins."""
    out_dir = Path(output)
    latest: dict[tuple, tuple[float, dict]] = {}
    for f in (out_dir / "runs").glob("*/result.json"):
        r = json.loads(f.read_text())
        key = (r["method"], r["seed"], r["fraction"])
        if key not in latest or f.stat().st_mtime > latest[key][0]:
            latest[key] = (f.stat().st_mtime, r)
    if not latest:
        raise FileNotFoundError(f"no runs/*/result.json under '{out_dir}'.")
    write_reports(out_dir, [r for _, r in latest.values()], title)
    print((out_dir / "summary.md").read_text())


def _write_cost_md(output: Path, cost: dict) -> None:
    rows = ["| method | epoch s (steady) | first epoch s | peak RSS MiB | RSS increase MiB | peak CUDA MiB |",
            "|---|---|---|---|---|---|"]
    for m in ("vanilla", "drd", "drd_cache"):
        c = cost[m]
        cuda = f"{c['peak_cuda_mib']:.0f}" if c.get("peak_cuda_mib") is not None else "-"
        rows.append(f"| {m} | {c['epoch_s']:.2f} | {c['first_epoch_s']:.2f} | {c['peak_rss_mib']:.0f} "
                    f"| {c['rss_increase_mib']:.0f} | {cuda} |")
    rows += ["", f"DRD / vanilla epoch time: {cost['ratio_drd_vs_vanilla']:.2f}x; "
             f"cached DRD / vanilla: {cost['ratio_drd_cache_vs_vanilla']:.2f}x (same process, one after the other).",
             "The first cached epoch fills the cache (teacher forward); later epochs read it.",
             "Peak RSS is process-wide and monotonic within the process: later methods include earlier ones' peak;"
             " 'RSS increase' is the peak during that method minus the RSS when it started."]
    (output / "cost.md").write_text("\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------ orchestration
def _parse_list(value: Any, cast=str) -> list:
    if isinstance(value, (list, tuple)):
        return [cast(v) for v in value]
    return [cast(v) for v in str(value).split(",") if str(v).strip()]


def main(
    output: str,
    bundle: str = "busi_ultrasound_classification",
    dataset: str = "busi",
    dataset_dir: str | None = None,
    methods: Any = DEFAULT_METHODS,
    seeds: int = 3,
    fractions: Any = "0.1,1.0",
    image_size: int = 64,
    epochs: int = 5,
    batch_size: int = 16,
    learning_rate: float | None = None,
    threads: int = 1,
    teacher_checkpoint: str | None = None,
    teacher_overlay: str = "teacher_standin_resnet50.json",
    data_root: str | None = None,
    latency_repeats: int = 20,
    cost: bool = True,
    cost_epochs: int = 3,
    extra_overrides: dict | None = None,
    timeout_s: int = 7200,
) -> list[dict]:
    """Run the benchmark (see the module docstring) and write the reports.

    Args:
        output: output folder (runs, CSV, markdown, PNG).
        bundle: bundle folder name under ``bundles/``.
        dataset: ``busi`` or ``brain_tumor_mri`` (the target dataset, read under ``data_root``), or
            ``bundle``: the bundle's own ``datalist`` for ``dataset_dir``.
        dataset_dir: the dataset folder for ``dataset="bundle"``.
        methods: comma-separated names from :data:`METHODS` (dependencies are added).
        seeds: number of seeds (0 .. seeds-1).
        fractions: comma-separated label fractions of the training set.
        image_size: input side length (``image_size`` and ``train_size``).
        epochs: training epochs per run.
        batch_size: batch size.
        learning_rate: optional learning-rate override.
        threads: torch CPU threads per run.
        teacher_checkpoint: stand-in teacher checkpoint (e.g. from ``tools/pretrain_standin.py``).
        teacher_overlay: teacher overlay (file path, or a name in the overlays or bundle configs folder).
        data_root: data root (default ``DRD_DATA_ROOT`` or ``../shared/data``).
        latency_repeats: timed forwards at batch 1 (a quarter of them at batch 32).
        cost: also write the vanilla / DRD / cached-DRD cost report.
        cost_epochs: epochs of each cost-report training.
        extra_overrides: further config overrides for every run.
        timeout_s: limit per child process.

    Returns:
        the results of every run.

    Raises:
        ValueError: for unknown methods.
    """
    from tools.pretrain_standin import data_root as default_root

    out_dir = Path(output).resolve()
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    bundle_dir = REPO_ROOT / "bundles" / bundle
    root = Path(data_root).resolve() if data_root else default_root()
    wanted = _parse_list(methods)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}.")
    for m in list(wanted):
        dep = METHODS[m][1]
        if dep and dep not in wanted:
            wanted.insert(wanted.index(m), dep)
    fracs = _parse_list(fractions, float)
    if dataset == "bundle":
        if not dataset_dir:
            raise ValueError("dataset='bundle' needs dataset_dir (the folder the bundle's datalist reads).")
        datalist, class_names = bundle_datalist(bundle_dir, dataset_dir, out_dir / "bundle_datalist")
    else:
        datalist, class_names = base_datalist(dataset, root)
    size = [int(image_size)] * 2
    common = {"bundle_root": str(bundle_dir), "num_workers": 0,
              "dataset_dir": str(Path(dataset_dir).resolve()) if dataset == "bundle" else str(root / dataset),
              "image_size": size, "num_epochs": int(epochs), "batch_size": int(batch_size),
              "num_classes": len(class_names), "class_names": class_names, "val_interval": 1}
    common |= _contract_defaults(bundle_dir, size)
    if learning_rate is not None:
        common["learning_rate"] = float(learning_rate)
    if teacher_checkpoint:
        common["teacher_checkpoint"] = str(Path(teacher_checkpoint).resolve())
    common |= dict(extra_overrides or {})
    in_channels = json.loads((bundle_dir / "configs" / "train.json").read_text()).get("in_channels", 1)

    def make_spec(method: str, seed: int, fraction: float, dep_dir: Path | None) -> dict:
        files = _config_files(bundle_dir, teacher_overlay, method)
        dl = dict(datalist, training=_stratified_take(datalist["training"], fraction, seed))
        overrides = dict(common, seed=seed, datalist=dl)
        if dep_dir is not None:
            fname, key = DEPENDENCY_IDS[METHODS[method][1]]
            overrides[key] = str(dep_dir / fname)
        ident = {"files": {f: Path(f).read_text() for f in files}, "overrides": overrides, "method": method,
                 "dep": str(dep_dir) if dep_dir else None, "teacher_sha": _file_digest(common.get("teacher_checkpoint"))}
        h = _hash(ident)
        name = f"{method}_s{seed}_f{fraction:g}_{h}"
        return {"method": method, "seed": seed, "fraction": fraction, "hash": h, "config_files": files,
                "overrides": overrides, "run_dir": str(out_dir / "runs" / name), "threads": threads,
                "num_classes": len(class_names), "in_channels": in_channels, "latency_repeats": latency_repeats}

    plan = [(m, s, f) for f in fracs for s in range(int(seeds)) for m in wanted]
    results: list[dict] = []
    run_dirs: dict[tuple, Path] = {}
    start = time.time()
    done_now = 0
    for k, (method, seed, fraction) in enumerate(plan, 1):
        dep = METHODS[method][1]
        spec = make_spec(method, seed, fraction, run_dirs.get((dep, seed, fraction)) if dep else None)
        run_dir = Path(spec["run_dir"])
        run_dirs[(method, seed, fraction)] = run_dir
        result_file = run_dir / "result.json"
        label = f"[{k}/{len(plan)}] {method} seed={seed} fraction={fraction:g}"
        if result_file.is_file():
            results.append(json.loads(result_file.read_text()))
            print(f"{label}: done before, skipped", flush=True)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_file = run_dir / "spec.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        t0 = time.time()
        print(f"{label}: running ...", flush=True)
        ok = _child(["run_one", "--spec_file", str(spec_file)], run_dir / "log.txt", threads, timeout_s)
        done_now += 1
        elapsed = time.time() - start
        remaining = sum(1 for m, s, f in plan[k:]) * elapsed / done_now
        if ok and result_file.is_file():
            r = json.loads(result_file.read_text())
            results.append(r)
            print(f"{label}: test acc {r['test_accuracy']:.3f}, {time.time() - t0:.0f} s "
                  f"(about {remaining / 60:.0f} min left)", flush=True)
        else:
            print(f"{label}: FAILED, see {run_dir / 'log.txt'} (about {remaining / 60:.0f} min left)", flush=True)
        write_reports(out_dir, results, f"{dataset} ({bundle}), {image_size} px, {epochs} epochs")
    if results:
        write_reports(out_dir, results, f"{dataset} ({bundle}), {image_size} px, {epochs} epochs")
    if cost:
        cost_file = out_dir / "cost.json"
        specs = []
        for m in ("vanilla", "drd", "drd_cache"):
            s = make_spec(m, 0, 1.0, None)
            s["overrides"]["num_epochs"] = int(cost_epochs)
            s["run_dir"] = str(out_dir / "cost" / m)
            s["cost_file"] = str(cost_file)
            specs.append(s)
        key = _hash([s["hash"] for s in specs] + [cost_epochs])
        marker = out_dir / "cost" / f"done_{key}"
        if not marker.is_file():
            (out_dir / "cost").mkdir(exist_ok=True)
            spec_file = out_dir / "cost" / "specs.json"
            spec_file.write_text(json.dumps(specs, indent=2))
            print("cost report: vanilla, DRD, cached DRD in one process ...", flush=True)
            if _child(["run_cost", "--spec_file", str(spec_file)], out_dir / "cost" / "log.txt", threads, timeout_s):
                marker.touch()
        if cost_file.is_file():
            _write_cost_md(out_dir, json.loads(cost_file.read_text()))
            print((out_dir / "cost.md").read_text(), flush=True)
    if results:
        print((out_dir / "summary.md").read_text(), flush=True)
    return results


def _file_digest(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    from drd_components.teachers.checkpoint import sha256sum

    return sha256sum(path)


def _child(args: list[str], log: Path, threads: int, timeout_s: int) -> bool:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w") as f:
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], stdout=f,
                                  stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            f.write(f"\nTIMEOUT after {timeout_s} s\n")
            return False
    return proc.returncode == 0


if __name__ == "__main__":
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    fire.Fire({"main": lambda **kw: main(**kw) and None, "report": report, "run_one": run_one, "run_cost": run_cost})
