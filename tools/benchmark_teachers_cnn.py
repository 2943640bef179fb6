"""Measure the CNN teachers: parameters, CPU forward time and peak memory for one bundle input.

Each teacher is measured in a fresh Python subprocess so that the peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that teacher alone. Weights are random
(``checkpoint=None``): the official files are not needed for cost figures, the architectures and
parameter counts are identical.

Usage::

    python tools/benchmark_teachers_cnn.py run                       # all four, markdown table
    python tools/benchmark_teachers_cnn.py run --teachers=pmc_clip,lvm_med --repeats=5
    python tools/benchmark_teachers_cnn.py run --teachers=merlin --merlin_size=128,128,96
    python tools/benchmark_teachers_cnn.py measure --name=lvm_med   # one teacher, JSON line
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import fire

#: name -> (import path, class name, default bundle input shape, input value range)
TEACHERS: dict[str, tuple[str, str, tuple[int, ...], tuple[float, float]]] = {
    "pmc_clip": ("drd_components.teachers.pmc_clip", "PMCCLIPTeacher", (1, 3, 224, 224), (0.0, 1.0)),
    "radimagenet": (
        "drd_components.teachers.radimagenet",
        "RadImageNetDenseNet121Teacher",
        (1, 1, 224, 224),
        (0.0, 1.0),
    ),
    "lvm_med": ("drd_components.teachers.lvm_med", "LVMMedResNet50Teacher", (1, 3, 224, 224), (0.0, 1.0)),
    "merlin": ("drd_components.teachers.merlin", "MerlinTeacher", (1, 1, 224, 224, 160), (-1000.0, 1000.0)),
}


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _names(teachers: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in teachers.split(",")] if isinstance(teachers, str) else [str(t) for t in teachers]
    unknown = [n for n in names if n not in TEACHERS]
    if unknown:
        raise ValueError(f"unknown teachers {unknown}; choose from {sorted(TEACHERS)}.")
    return names


def measure(
    name: str, repeats: int = 3, warmup: int = 1, size: Sequence[int] | str | None = None, threads: int = 0
) -> None:
    """Build one teacher and time ``stage_features`` on one input; print a JSON record.

    Args:
        name: one of ``pmc_clip``, ``radimagenet``, ``lvm_med``, ``merlin``.
        repeats: timed forwards (the median is reported; at least one).
        warmup: untimed forwards before timing.
        size: spatial size of the input and of the teacher (default: the teacher's bundle size).
        threads: torch intra-op threads (0 keeps torch's default).
    """
    import importlib

    import torch

    if threads:
        torch.set_num_threads(threads)
    module, cls_name, shape, (low, high) = TEACHERS[name]
    if size is not None:
        size = tuple(int(s) for s in (size if isinstance(size, (list, tuple)) else str(size).split(",")))
        shape = shape[:2] + size
    kwargs = {"spatial_size": tuple(shape[2:])}
    cls = getattr(importlib.import_module(module), cls_name)
    rss_start = _max_rss_gib()
    t0 = time.perf_counter()
    teacher = cls(**kwargs)
    build_s = time.perf_counter() - t0
    rss_built = _max_rss_gib()
    x = torch.rand(shape) * (high - low) + low
    for _ in range(warmup):
        teacher.stage_features(x)
    times, taps = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        feats = teacher.stage_features(x)
        times.append(time.perf_counter() - t0)
        taps = [list(f.shape) for f in feats]
        del feats
    record = {
        "name": name,
        "class": cls_name,
        "input": list(shape),
        "params": sum(p.numel() for p in teacher.parameters()),
        "taps": taps,
        "build_s": build_s,
        "forward_s": statistics.median(times),
        "threads": torch.get_num_threads(),
        "rss_start_gib": rss_start,
        "peak_rss_built_gib": rss_built,
        "peak_rss_gib": _max_rss_gib(),
        "torch": torch.__version__,
    }
    print(json.dumps(record))


def run(
    teachers: str | Sequence[str] = "pmc_clip,radimagenet,lvm_med,merlin",
    repeats: int = 3,
    merlin_size: Sequence[int] | str | None = None,
    merlin_repeats: int = 1,
    threads: int = 0,
    timeout_s: int = 1800,
) -> None:
    """Measure each teacher in its own subprocess and print a markdown table (with tap shapes).

    Args:
        teachers: comma-separated names.
        repeats: timed forwards for the 2D teachers.
        merlin_size: Merlin's ``H,W,D`` (default: its documented 224,224,160).
        merlin_repeats: timed forwards for Merlin (no warm-up; one forward is slow on CPU).
        threads: torch intra-op threads in the subprocesses (0: torch's default).
        timeout_s: per-teacher subprocess timeout.
    """
    rows, tap_lines = [], []
    for name in _names(teachers):
        cmd = [sys.executable, __file__, "measure", f"--name={name}", f"--threads={threads}"]
        if name == "merlin":
            cmd += [f"--repeats={merlin_repeats}", "--warmup=0"]
            if merlin_size is not None:
                size = merlin_size if isinstance(merlin_size, str) else ",".join(map(str, merlin_size))
                cmd.append(f"--size={size}")
        else:
            cmd.append(f"--repeats={repeats}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-800:]
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            rows.append(f"| {name} | failed (rc {proc.returncode}): `{last}` | | | | | | |")
            continue
        r = json.loads(lines[-1])
        tap_lines.append((r["class"], r["taps"]))
        rows.append(
            f"| {r['class']} | {r['params'] / 1e6:.2f} M | {'x'.join(map(str, r['input']))} | "
            f"{r['threads']} | {r['build_s']:.2f} | {r['forward_s']:.3f} | {r['peak_rss_built_gib']:.2f} | "
            f"{r['peak_rss_gib']:.2f} |"
        )
    header = (
        "| teacher | params | input (B x C x spatial) | threads | build s | forward s (median) "
        "| peak RSS after build GiB | peak RSS incl. forward GiB |\n|---|---|---|---|---|---|---|---|"
    )
    print(header + "\n" + "\n".join(rows))
    for name, taps in tap_lines:
        print(f"- {name} taps: " + ", ".join("x".join(map(str, t)) for t in taps))


if __name__ == "__main__":
    fire.Fire({"run": run, "measure": measure})
