"""Time one training epoch of a DRD student against the vanilla student, in one process, on the same data.

Usage:
    python tools/benchmark_epoch.py [--teacher pmc_clip|standin] [--image_size 224] [--n_images 64]
        [--batch_size 16] [--repeats 2] [--threads 2]

Teachers have random weights (timing does not depend on the values). Prints a markdown table with
the median epoch time of each method, the ratio DRD / vanilla and the peak resident memory of
the process after each method.
"""

from __future__ import annotations

import resource
import statistics
import time

import fire
import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from drd_components.engines import DRDTrainer
from drd_components.losses import DRDLoss
from drd_components.networks import ReprogrammingModule, StagedResNet18


def _teacher(name: str, image_size: int):
    if name == "pmc_clip":
        from drd_components.teachers import PMCCLIPTeacher

        return PMCCLIPTeacher()
    if name == "standin":
        from drd_components.teachers import ResNetStandInTeacher

        return ResNetStandInTeacher(spatial_size=image_size)
    raise ValueError(f"unknown teacher '{name}' (pmc_clip, standin).")


def _epoch_time(trainer, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # first epoch is a warm-up
        start = time.perf_counter()
        trainer.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(
    teacher: str = "pmc_clip",
    image_size: int = 224,
    n_images: int = 64,
    batch_size: int = 16,
    repeats: int = 2,
    threads: int = 2,
    drd_stages: str = "all",
) -> dict:
    """Run the benchmark and print the table.

    Args:
        teacher: ``pmc_clip`` (the bundle's teacher) or ``standin``.
        image_size: input side length.
        n_images: images per epoch.
        batch_size: batch size.
        repeats: timed epochs per method (after one warm-up epoch).
        threads: torch CPU threads.
        drd_stages: ``all`` (DRD) or ``last`` (RD).

    Returns:
        the measured numbers.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = [
        {"image": torch.rand(1, image_size, image_size), "label": torch.tensor(i % 3)} for i in range(n_images)
    ]
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=True)
    results = {}

    student = StagedResNet18(2, 1, 3)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    vanilla = SupervisedTrainer("cpu", 1, loader, student, opt, torch.nn.CrossEntropyLoss())
    results["vanilla"] = {"epoch_s": _epoch_time(vanilla, repeats),
                          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    t = _teacher(teacher, image_size)
    student = StagedResNet18(2, 1, 3)
    proj = ReprogrammingModule.from_models(t, student, [2, 1, image_size, image_size], stages=drd_stages)
    opt = torch.optim.AdamW(list(student.parameters()) + list(proj.parameters()), lr=1e-3)
    drd = DRDTrainer("cpu", 1, loader, student, opt, DRDLoss(torch.nn.CrossEntropyLoss()), t, proj)
    results["DRD"] = {"epoch_s": _epoch_time(drd, repeats),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    ratio = results["DRD"]["epoch_s"] / results["vanilla"]["epoch_s"]
    print(f"\n{n_images} images of {image_size}x{image_size}, batch {batch_size}, teacher {teacher}, "
          f"{threads} threads, median of {repeats} epochs:\n")
    print("| method | epoch time (s) | peak RSS after method (MiB) |")
    print("|---|---|---|")
    for name in ("vanilla", "DRD"):
        print(f"| {name} | {results[name]['epoch_s']:.2f} | {results[name]['peak_rss_mib']:.0f} |")
    print(f"\nDRD / vanilla epoch time: {ratio:.2f}x")
    results["ratio"] = ratio
    return results


if __name__ == "__main__":
    fire.Fire(lambda **kw: main(**kw) and None)
