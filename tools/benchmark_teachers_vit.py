"""Measure the MedSAM, MSA, Swin-UMamba and SAT teachers: parameters, forward time, peak memory.

Each teacher runs in a fresh Python subprocess, so the peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that teacher alone. Weights are random
(``checkpoint=None``): cost figures do not depend on the official files; the architectures and
parameter counts are the same. The input is one grey sample of the teacher's default model size
(``B = 1``), pushed through the teacher's own preprocessing and ``stage_features``.

Usage::

    python tools/benchmark_teachers_vit.py run                                  # all, markdown table
    python tools/benchmark_teachers_vit.py run --teachers=swin_umamba,sat_nano --repeats=3
    python tools/benchmark_teachers_vit.py run --sizes="sat_pro=192,192,64;medsam=512,512"
    python tools/benchmark_teachers_vit.py measure --name=medsam               # one teacher, JSON line
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

#: name -> (module, class, default input shape B x C x spatial, input value range, constructor kwargs)
TEACHERS: dict[str, tuple[str, str, tuple[int, ...], tuple[float, float], dict]] = {
    "medsam": ("drd_components.teachers.sam_vit", "MedSAMTeacher", (1, 1, 1024, 1024), (0.0, 1.0), {}),
    "msa": (
        "drd_components.teachers.medical_sam_adapter",
        "MedicalSAMAdapterTeacher",
        (1, 1, 1024, 1024),
        (0.0, 1.0),
        {},
    ),
    "swin_umamba": ("drd_components.teachers.swin_umamba", "SwinUMambaTeacher", (1, 1, 256, 256), (0.0, 1000.0), {}),
    "sat_nano": (
        "drd_components.teachers.sat",
        "SATTeacher",
        (1, 1, 288, 288, 96),
        (-1000.0, 1000.0),
        {"variant": "nano"},
    ),
    "sat_pro": (
        "drd_components.teachers.sat",
        "SATTeacher",
        (1, 1, 288, 288, 96),
        (-1000.0, 1000.0),
        {"variant": "pro"},
    ),
}


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _names(teachers: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in teachers.split(",")] if isinstance(teachers, str) else [str(t) for t in teachers]
    unknown = [n for n in names if n not in TEACHERS]
    if unknown:
        raise ValueError(f"unknown teachers {unknown}; choose from {sorted(TEACHERS)}.")
    return names


def _parse_size(size) -> tuple[int, ...]:
    if isinstance(size, (list, tuple)):
        return tuple(int(s) for s in size)
    return tuple(int(s) for s in str(size).strip("()[] ").split(","))


def _parse_sizes(sizes: str | dict | None) -> dict[str, tuple[int, ...]]:
    if not sizes:
        return {}
    if isinstance(sizes, dict):
        return {k: _parse_size(v) for k, v in sizes.items()}
    out = {}
    for item in str(sizes).split(";"):
        if item.strip():
            name, value = item.split("=")
            out[name.strip()] = _parse_size(value)
    return out


def measure(
    name: str,
    repeats: int = 1,
    warmup: int = 0,
    size: Sequence[int] | str | None = None,
    threads: int = 0,
    device: str = "cpu",
) -> None:
    """Build one teacher with random weights, time ``stage_features`` on one input, print JSON.

    Args:
        name: one of ``medsam``, ``msa``, ``swin_umamba``, ``sat_nano``, ``sat_pro``.
        repeats: timed forwards (the median is reported; at least one).
        warmup: untimed forwards before timing.
        size: spatial size of the input and of the teacher (default: the teacher's default size).
        threads: torch intra-op threads (0 keeps torch's default).
        device: ``cpu`` or ``cuda`` (peak memory is then the CUDA allocator's peak).
    """
    import importlib
    import logging

    import torch

    logging.disable(logging.WARNING)  # the random-weights warning is expected here
    if threads:
        torch.set_num_threads(threads)
    module, cls_name, shape, (low, high), kwargs = TEACHERS[name]
    if size is not None:
        shape = shape[:2] + _parse_size(size)
    cls = getattr(importlib.import_module(module), cls_name)
    rss_start = _max_rss_gib()
    t0 = time.perf_counter()
    teacher = cls(spatial_size=tuple(shape[2:]), **kwargs).to(device)
    build_s = time.perf_counter() - t0
    rss_built = _max_rss_gib()
    x = (torch.rand(shape) * (high - low) + low).to(device)
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        teacher.stage_features(x)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, taps = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        feats = teacher.stage_features(x)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        taps = [list(f.shape) for f in feats]
        del feats
    record = {
        "name": name,
        "class": cls_name,
        "variant": kwargs.get("variant", ""),
        "input": list(shape),
        "params": sum(p.numel() for p in teacher.parameters()),
        "taps": dict(zip(teacher.tap_names, taps)),
        "build_s": build_s,
        "forward_s": statistics.median(times),
        "threads": torch.get_num_threads(),
        "device": device,
        "rss_start_gib": rss_start,
        "peak_rss_built_gib": rss_built,
        "peak_rss_gib": _max_rss_gib(),
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "torch": torch.__version__,
    }
    print(json.dumps(record))


def run(
    teachers: str | Sequence[str] = "medsam,msa,swin_umamba,sat_nano,sat_pro",
    repeats: int = 1,
    warmup: int = 0,
    sizes: str | dict | None = None,
    threads: int = 0,
    device: str = "cpu",
    timeout_s: int = 3600,
) -> None:
    """Measure each teacher in its own subprocess and print a markdown table (and the tap shapes).

    Args:
        teachers: comma-separated names.
        repeats: timed forwards per teacher.
        warmup: untimed forwards per teacher.
        sizes: per-teacher spatial sizes overriding the defaults, e.g. ``"sat_pro=192,192,64;msa=512,512"``.
        threads: torch intra-op threads in the subprocesses (0: torch's default).
        device: ``cpu`` or ``cuda``.
        timeout_s: per-teacher subprocess timeout.
    """
    overrides = _parse_sizes(sizes)
    rows, tap_lines = [], []
    for name in _names(teachers):
        cmd = [
            sys.executable,
            __file__,
            "measure",
            f"--name={name}",
            f"--repeats={repeats}",
            f"--warmup={warmup}",
            f"--threads={threads}",
            f"--device={device}",
        ]
        if name in overrides:
            cmd.append(f"--size={','.join(map(str, overrides[name]))}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rows.append(f"| {name} | timed out after {timeout_s} s | | | | | | | |")
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            rows.append(f"| {name} | failed (rc {proc.returncode}): `{tail[-1] if tail else ''}` | | | | | | | |")
            continue
        r = json.loads(lines[-1])
        default = TEACHERS[name][2]
        note = "default size" if tuple(r["input"]) == default else f"reduced from {'x'.join(map(str, default))}"
        peak = f"{r['peak_cuda_gib']:.2f} (CUDA)" if r["peak_cuda_gib"] is not None else f"{r['peak_rss_gib']:.2f}"
        rows.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {'x'.join(map(str, r['input']))} | "
            f"{r['device']} x{r['threads']} | {r['build_s']:.2f} | {r['forward_s']:.2f} | "
            f"{r['peak_rss_built_gib']:.2f} | {peak} | {note} |"
        )
        tap_lines.append(f"- {name}: " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["taps"].items()))
    print(
        "| teacher | params | input (B x C x spatial) | device x threads | build s | forward s "
        "| RSS after build GiB | peak memory GiB | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if tap_lines:
        print("\nTapped feature shapes:\n" + "\n".join(tap_lines))


if __name__ == "__main__":
    fire.Fire({"run": run, "measure": measure})
