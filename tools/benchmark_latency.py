"""Inference latency of a bundle's student vs its teacher (the model it replaces at deployment).

Builds ``network_def`` (student) and ``teacher_def`` (foundation-model teacher, through its own
preprocessing, i.e. what a deployment of the teacher's encoder would run) from the bundle's
``configs/train.json``, in eval mode under ``torch.inference_mode()``, and times one forward pass
per batch size: ``warmup`` untimed runs, then the median of ``repeats`` timed runs (stopping early
once ``budget_s`` seconds were spent on one cell; the table says how many runs were timed). On CUDA
every run is bracketed by ``torch.cuda.synchronize()``. Weights are RANDOM unless checkpoints are
given (latency does not depend on the values); the table says so.

Usage:
    OMP_NUM_THREADS=1 python tools/benchmark_latency.py --bundle_root bundles/busi_ultrasound_classification \
        [--batch_sizes "[1,32]"] [--repeats 5] [--warmup 1] [--device cpu] [--threads 1] \
        [--student_weights models/model.pt] [--teacher_checkpoint path] [--overrides '{"image_size": [224, 224]}']
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drd_components.export.bundle import bundle_input_shape, bundle_parser, load_state_dict_file  # noqa: E402


def _params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def time_forward(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeats: int, budget_s: float) -> tuple[float, int]:
    """Median wall time (s) of ``model(x)`` and the number of timed runs.

    Args:
        model: module in eval mode.
        x: input batch on the model's device.
        warmup: untimed runs first.
        repeats: timed runs at most.
        budget_s: stop timing once this many seconds were spent (at least one timed run).

    Returns:
        ``(median seconds, runs timed)``.
    """
    cuda = x.is_cuda
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if cuda:
            torch.cuda.synchronize()
        times: list[float] = []
        spent = 0.0
        while len(times) < max(1, repeats) and (not times or spent < budget_s):
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            spent += times[-1]
    return statistics.median(times), len(times)


def main(
    bundle_root: str,
    config_file: str = "configs/train.json",
    batch_sizes: list | tuple = (1, 32),
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float = 60.0,
    device: str | None = None,
    threads: int | None = None,
    student_weights: str | None = None,
    teacher_checkpoint: str | None = None,
    overrides: dict | None = None,
    json_out: str | None = None,
) -> dict:
    """Print a markdown table of student and teacher latencies (see module docstring)."""
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    over = dict(overrides or {})
    over.setdefault("teacher_checkpoint", teacher_checkpoint)
    over.setdefault("teacher_sha256", "")
    parser = bundle_parser(bundle_root, config_file, over)
    shape = bundle_input_shape(parser)
    student = parser.get_parsed_content("network_def").to(dev).eval()
    if student_weights:
        path = Path(student_weights) if Path(student_weights).is_absolute() else Path(bundle_root) / student_weights
        student.load_state_dict(load_state_dict_file(path))
    teacher = parser.get_parsed_content("teacher_def").to(dev).eval()
    models = {"student": student, "teacher": teacher}
    names = {k: type(m).__name__ for k, m in models.items()}
    weights = {"student": "trained" if student_weights else "RANDOM",
               "teacher": "official checkpoint" if teacher_checkpoint else "RANDOM"}
    rows = []
    for batch in [int(b) for b in batch_sizes]:
        x = torch.rand(batch, *shape, device=dev)
        for role, model in models.items():
            row = {"model": role, "class": names[role], "weights": weights[role], "params_M": round(_params(model), 2),
                   "batch": batch, "median_ms": None, "ms_per_image": None, "runs": 0}
            try:
                seconds, runs = time_forward(model, x, warmup, repeats, budget_s)
                row.update(median_ms=round(seconds * 1e3, 2), ms_per_image=round(seconds * 1e3 / batch, 2), runs=runs)
            except (RuntimeError, MemoryError) as e:  # report the cell instead of losing the table
                if "memory" not in str(e).lower():
                    raise
                row["error"] = "out of memory"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"  {role} batch {batch}: {row['median_ms']} ms ({row['runs']} runs) {row.get('error', '')}",
                  file=sys.stderr, flush=True)
    info = {"bundle": Path(bundle_root).name, "input_shape": shape, "device": str(dev),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "warmup": warmup, "repeats": repeats}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    print(f"\n{info['bundle']}: input {shape}, device {info['device']}"
          + (f" ({info['gpu']})" if "gpu" in info else f", {info['cpu_threads']} CPU thread(s)")
          + f", torch {torch.__version__}, warm-up {warmup}, median of up to {repeats} runs\n")
    print("| model | network | weights | params (M) | batch | median latency (ms) | ms / image | runs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r.get("error") or r["median_ms"]
        print(f"| {r['model']} | {r['class']} | {r['weights']} | {r['params_M']} | {r['batch']} | {ms} "
              f"| {r['ms_per_image'] or '-'} | {r['runs']} |")
    for batch in [int(b) for b in batch_sizes]:
        s = next(r for r in rows if r["model"] == "student" and r["batch"] == batch)
        t = next(r for r in rows if r["model"] == "teacher" and r["batch"] == batch)
        if s["median_ms"] and t["median_ms"]:
            print(f"batch {batch}: teacher / student latency = {t['median_ms'] / s['median_ms']:.1f}x")
    result = {"info": info, "rows": rows}
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    fire.Fire(lambda **kw: main(**kw) and None)
