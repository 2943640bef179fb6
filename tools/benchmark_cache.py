"""Cost of the multi-view teacher-feature cache, and its size per sample for every bundle.

Usage:
    # epoch time, peak memory and disk of vanilla, DRD, cached DRD (K=4, K=8) and cached DRD with
    # hybrid paths on k=1 of N stages per step, one after the other in ONE process, on one bundle
    python tools/benchmark_cache.py run --bundle busi_ultrasound_classification --dataset_dir /data/busi \
        [--teacher_overlay teacher_standin.json] [--epochs 3] [--workdir <scratch folder>] \
        [--variants vanilla,drd,cache_k4,cache_k8,cache_k8_hybrid1] [--prefill true] \
        [--overrides '{"image_size": [224, 224], "num_workers": 4}'] [--output results.json]
    # bytes per cached view / per sample of every bundle at its configured sizes (random-weight
    # teachers of the right architecture, built on the meta device: nothing is computed)
    python tools/benchmark_cache.py sizes [--views 8]

``run`` trains each variant for ``epochs`` epochs without validation and prints a markdown table:
first and later ("steady") epoch times, the ratio of the steady epoch time to vanilla's, the
time to fill the cache before training (``--prefill``; cached variants share one cache folder
per K, so a later variant with the same key finds it filled), the peak resident memory while the
variant ran (Linux: the process's high-water mark reset before each variant; it includes what
earlier variants left allocated) and the cache's size on disk. Timings mean something only on a
quiet machine.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python tools/benchmark_cache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fire
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

#: variant -> (overlays after train.json and the teacher overlay, config overrides)
VARIANTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "vanilla": (["train_vanilla.json"], {}),
    "drd": ([], {}),
    "cache_k4": (["train_drd_cache.json"], {"teacher_cache_views": 4}),
    "cache_k8": (["train_drd_cache.json"], {"teacher_cache_views": 8}),
    "cache_k8_hybrid1": (["train_drd_cache.json"], {"teacher_cache_views": 8, "hybrid_stages_per_step": 1}),
    # one view per sample (no random augmentation): the demo's setting, for budgets where K views do not fit
    "cache_k1": (["train_drd_cache.json"], {"teacher_cache_views": 1}),
    "cache_k1_hybrid1": (["train_drd_cache.json"], {"teacher_cache_views": 1, "hybrid_stages_per_step": 1}),
}


class PeakMemory:
    """Peak resident memory of this process over a block of code (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) on entry and reads ``VmHWM`` on
    exit; where that is not possible, samples ``VmRSS`` every 50 ms in a thread.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm = False

    @staticmethod
    def _status(field: str) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_bytes = max(self.peak_bytes, self._status("VmRSS"))

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm = self._status("VmHWM") > 0
        except OSError:
            self._hwm = False
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._hwm:
            self.peak_bytes = self._status("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._status("VmRSS"))


def _bundle_files(bundle: str, overlays: list[str], teacher_overlay: str | None) -> list[str]:
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    names = ["train.json"] + ([teacher_overlay] if teacher_overlay else []) + overlays
    return [str(p if (p := Path(n)).is_absolute() else configs / n) for n in names]


def run_variant(
    name: str,
    bundle: str,
    dataset_dir: str,
    workdir: Path,
    epochs: int,
    teacher_overlay: str | None,
    overrides: dict[str, Any],
    prefill: bool,
) -> dict[str, Any]:
    """Train one variant; returns its epoch times, fill time, peak memory and cache size."""
    from monai.bundle import ConfigWorkflow

    overlays, variant_ids = VARIANTS[name]
    ids = {"dataset_dir": str(dataset_dir), "output_dir": str(workdir / name), "num_epochs": int(epochs), "resume": False,
           "progress_bar": False, "val_interval": int(epochs) + 1, "teacher_cache_dir": str(workdir / "teacher_cache")}
    ids.update(overrides)
    ids.update(variant_ids)
    root = REPO_ROOT / "bundles" / bundle
    result: dict[str, Any] = {"variant": name}
    with PeakMemory() as memory:
        wf = ConfigWorkflow(config_file=_bundle_files(bundle, overlays, teacher_overlay), workflow_type="train",
                            bundle_root=str(root), logging_file=False, meta_file=str(root / "configs" / "metadata.json"), **ids)
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        cache = getattr(trainer, "feature_cache", None)
        fill_s = 0.0
        if cache is not None and prefill:
            dataset = wf.parser.get_parsed_content("train#dataset")
            stats = cache.fill(dataset, batch_size=int(wf.parser.get_parsed_content("batch_size")),
                               num_workers=int(wf.parser.get_parsed_content("num_workers")))
            fill_s = stats["seconds"]
            result["fill_computed"] = stats["computed"]
        start = time.perf_counter()
        wf.run()
        result["train_s"] = time.perf_counter() - start
        times = list(getattr(trainer.state, "epoch_times", []))
        result["epoch_s"] = times
        result["first_epoch_s"] = times[0] if times else math.nan
        result["steady_epoch_s"] = sum(times[1:]) / len(times[1:]) if len(times) > 1 else result["first_epoch_s"]
        result["fill_s"] = fill_s
        if cache is not None:
            result.update(cache_dir=str(cache.directory), cache_disk_bytes=cache.disk_bytes(),
                          cache_bytes_per_entry=cache.bytes_per_entry, cache_entries=cache.num_entries,
                          cache_hits=cache.hits, cache_misses=cache.misses)
        wf.finalize()
        del wf, trainer, cache
        gc.collect()
    result["peak_rss_bytes"] = memory.peak_bytes
    return result


def run(
    bundle: str,
    dataset_dir: str,
    teacher_overlay: str | None = None,
    epochs: int = 3,
    workdir: str | None = None,
    variants: str | list | tuple = "vanilla,drd,cache_k4,cache_k8,cache_k8_hybrid1",
    prefill: bool = True,
    overrides: dict | str | None = None,
    output: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train every variant on one bundle in this process and print the comparison.

    Args:
        bundle: bundle name (folder under ``bundles/``).
        dataset_dir: the bundle's ``dataset_dir``.
        teacher_overlay: extra config after ``train.json`` (e.g. ``teacher_standin.json``, or a path).
        epochs: training epochs per variant (the first cached epoch is steady too when ``prefill``).
        workdir: outputs and the cache folder (default: a new temporary folder).
        variants: comma-separated subset of ``vanilla, drd, cache_k4, cache_k8, cache_k8_hybrid1, cache_k1,
            cache_k1_hybrid1``.
        prefill: fill the cache (timed separately) before training the cached variants.
        overrides: config overrides for every variant (a dict or its JSON text).
        output: optional JSON file for the results.
        threads: torch CPU threads (default: unchanged).

    Returns:
        ``{"variants": {name: result}, "ratios": {name: steady epoch / vanilla's}}``.
    """
    import tempfile

    if threads:
        torch.set_num_threads(int(threads))
    names = variants.split(",") if isinstance(variants, str) else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}.")
    if isinstance(overrides, str):
        overrides = json.loads(overrides)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="benchmark_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        results[name] = run_variant(name, bundle, dataset_dir, work, epochs, teacher_overlay, dict(overrides or {}), prefill)
    base = results.get("vanilla", {}).get("steady_epoch_s")
    ratios = {n: (r["steady_epoch_s"] / base if base else math.nan) for n, r in results.items()}
    report = {"bundle": bundle, "epochs": epochs, "prefill": prefill, "workdir": str(work), "variants": results, "ratios": ratios,
              "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}
    lines = [f"{bundle}, {epochs} epochs per variant, one process ({report['device']}, {report['threads']} threads):", "",
             "| variant | first epoch (s) | steady epoch (s) | steady / vanilla | cache fill (s) | peak RSS (MiB) | cache on disk (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        disk = f"{r['cache_disk_bytes'] / 2**20:.1f}" if "cache_disk_bytes" in r else "-"
        fill = f"{r['fill_s']:.2f}" if "cache_dir" in r else "-"
        lines.append(f"| {n} | {r['first_epoch_s']:.2f} | {r['steady_epoch_s']:.2f} | {ratios[n]:.2f}x | {fill} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} | {disk} |")
    print("\n".join(lines))
    if output:
        Path(output).write_text(json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------------------------------------- sizes
def entry_sizes(bundle: str, **overrides: Any) -> dict[str, Any]:
    """Shapes and bytes of one cache entry of a bundle at its configured sizes (or ``overrides``).

    The teacher (random weights), the student and the projectors are built on the ``meta`` device
    from the bundle's ``train.json``: shapes only, nothing is computed or allocated.

    Args:
        bundle: bundle name.
        overrides: config overrides (e.g. ``image_size=[32, 32, 32]``, ``teacher_spatial_size=[64, 64, 64]``).

    Returns:
        ``teacher_shapes`` and ``stored_shapes`` per kept tap (per sample), ``entry_bytes`` (fp16
        features + 45 bytes of flag, CRC and input fingerprint), ``teacher_size_bytes`` (the kept
        taps at the teacher's size), ``items_per_view``, ``train_size``, ``teacher_spatial_size``.
    """
    from monai.bundle import ConfigParser

    from drd_components.engines.feature_cache import _tap_plans, stored_feature_shape
    from drd_components.networks.reprogramming import ReprogrammingModule

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser["bundle_root"] = str(REPO_ROOT / "bundles" / bundle)
    for key in list(parser.get()):
        if key.startswith("teacher_") and key.endswith("checkpoint"):
            parser[key] = None  # random weights of the right architecture
    for key, value in overrides.items():
        parser[key] = value
    parser.parse(reset=True)
    in_channels = int(parser.get_parsed_content("in_channels"))
    size = [int(s) for s in parser.get_parsed_content("train_size")]
    level = logging.getLogger().level
    logging.disable(logging.WARNING)  # "using RANDOM weights"
    try:
        with torch.device("meta"):
            teacher = parser.get_parsed_content("teacher_def").to("meta")
            student = parser.get_parsed_content("network_def")
            kwargs = {"norm": parser.get_parsed_content("projector_norm")} if "projector_norm" in parser.get() else {}
            projectors = ReprogrammingModule.from_models(teacher, student, [2, in_channels] + size,
                                                         stages=parser.get_parsed_content("drd_stages"), **kwargs)
            feats = teacher.stage_features(torch.zeros(1, in_channels, *size))
    finally:
        logging.disable(logging.NOTSET)
        logging.getLogger().setLevel(level)
    plans = _tap_plans(projectors)
    teacher_shapes = {t: tuple(feats[t].shape[1:]) for t in sorted(plans)}
    stored = {t: stored_feature_shape(plans[t], teacher_shapes[t]) for t in sorted(plans)}
    items = int(parser.get_parsed_content("samples_per_volume")) if "samples_per_volume" in parser.get() else 1
    return {
        "bundle": bundle,
        "teacher": type(teacher).__name__,
        "train_size": size,
        "teacher_spatial_size": parser.get_parsed_content("teacher_spatial_size") if "teacher_spatial_size" in parser.get() else None,
        "teacher_shapes": teacher_shapes,
        "stored_shapes": stored,
        "entry_bytes": sum(math.prod(s) for s in stored.values()) * 2 + 45,
        "teacher_size_bytes": sum(math.prod(s) for s in teacher_shapes.values()) * 2,
        "items_per_view": items,
    }


def sizes(views: int = 8, bundles: str | None = None, output: str | None = None) -> list[dict[str, Any]]:
    """Print the cache's bytes per view and per sample for every bundle (and VesselMNIST3D variants).

    Args:
        views: K, views per sample.
        bundles: comma-separated subset (default: all 18).
        output: optional JSON file for the rows.

    Returns:
        one :func:`entry_sizes` dict per row (``error`` instead where the dry run fails).
    """
    from tools.bundle_specs import BUNDLES

    names = bundles.split(",") if bundles else [s.name for s in BUNDLES]
    cases: list[tuple[str, str, dict]] = [(n, "", {}) for n in names]
    if "vessel_mra_classification" in names:
        cases.append(("vessel_mra_classification", "student 32^3, teacher 64^3",
                      {"image_size": [32, 32, 32], "teacher_spatial_size": [64, 64, 64]}))
    rows = []
    lines = [f"K = {views} views per sample, float16; entry = one view (one crop of it for 3D segmentation).", "",
             "| bundle | teacher | student input | teacher input | stored taps (C x size) | MiB per entry | "
             "at the teacher's size | entries per sample | MiB per sample |", "|---|---|---|---|---|---|---|---|---|"]
    for name, note, overrides in cases:
        try:
            row = entry_sizes(name, **overrides)
        except Exception as e:  # noqa: BLE001 - report the bundle and go on
            rows.append({"bundle": name, "note": note, "error": f"{type(e).__name__}: {e}"})
            lines.append(f"| {name} | dry run failed: {str(e)[:120]} | | | | | | | |")
            continue
        row["note"] = note
        per_sample = views * row["items_per_view"]
        row["sample_bytes"] = per_sample * row["entry_bytes"]
        rows.append(row)
        fmt = lambda s: "x".join(str(v) for v in s)  # noqa: E731
        taps = ", ".join(f"{s[0]}x{fmt(s[1:])}" for s in row["stored_shapes"].values())
        tsize = row["teacher_spatial_size"]
        tsize = fmt(tsize) if isinstance(tsize, (list, tuple)) else (str(tsize) if tsize is not None else "as student")
        lines.append(f"| {name}{' (' + note + ')' if note else ''} | {row['teacher']} | {fmt(row['train_size'])} | {tsize} | {taps} | "
                     f"{row['entry_bytes'] / 2**20:.2f} | {row['teacher_size_bytes'] / 2**20:.2f} | {per_sample} | "
                     f"{row['sample_bytes'] / 2**20:.1f} |")
    print("\n".join(lines))
    if output:
        Path(output).write_text(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    fire.Fire({"run": run, "sizes": sizes})
