"""Fill a bundle's multi-view teacher-feature cache before training (every view of every sample).

Usage (in a bundle folder, with the same config files and overrides as the training run):
    python ../../tools/fill_teacher_cache.py --config_file "['configs/train.json','configs/train_drd_cache.json']" \
        --dataset_dir /data/busi [--teacher_cache_dir /fast/disk/teacher_cache] [--teacher_cache_views 8] \
        [--batch_size 16] [--num_workers 4] [--device cuda:0] [--verify true]

The cache (``teacher_feature_cache`` of ``train_drd_cache.json``) runs the teacher once per view
of each training sample and stores the features under ``teacher_cache_dir``; training runs with
the same key (teacher weights, taps, transforms, view seed, K, data; the run's ``seed`` is *not*
part of it) then never run the teacher. Several fills of one cache may run at once (each
computes what it finds missing; a reader never accepts a half-written entry). See
``docs/teacher_cache.md``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python tools/fill_teacher_cache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fire
import torch
from monai.bundle import ConfigParser


def load_bundle_parser(config_file: str | list[str], bundle_root: str | os.PathLike | None = None, **overrides: Any) -> ConfigParser:
    """A parsed bundle config: ``config_file`` (one file or a list, later files override), then ``overrides``.

    Args:
        config_file: config file(s), relative to the current folder.
        bundle_root: value of the ``bundle_root`` id (default: the folder above ``configs/`` of
            the first file, else the current folder).
        overrides: ``id=value`` pairs (``#``-separated ids allowed).

    Returns:
        the parser.
    """
    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    parser = ConfigParser()
    parser.read_config(files)
    if bundle_root is None:
        first = Path(files[0]).resolve()
        bundle_root = first.parent.parent if first.parent.name == "configs" else Path.cwd()
    parser["bundle_root"] = str(bundle_root)
    for key, value in overrides.items():
        parser[key] = value
    parser.parse(reset=True)
    return parser


def fill(
    config_file: str | list[str],
    bundle_root: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    verify: bool = False,
    cache_id: str = "teacher_feature_cache",
    dataset_id: str = "train#dataset",
    **overrides: Any,
) -> dict:
    """Compute every missing entry of the bundle's teacher cache and print a summary.

    Args:
        config_file: the training config files, with ``train_drd_cache.json`` (or an overlay
            defining ``cache_id`` and a multi-view ``dataset_id``).
        bundle_root: the bundle folder (default: from the config path).
        batch_size: views per teacher forward (default: the config's ``batch_size``).
        num_workers: data-loader workers (default: the config's ``num_workers``).
        device: teacher device (default: the config's ``device``).
        verify: also re-read every stored entry (CRC and input fingerprint), recomputing bad ones.
        cache_id: config id of the cache.
        dataset_id: config id of the multi-view training dataset.
        overrides: any other config id, e.g. ``--dataset_dir /data/busi``.

    Returns:
        ``computed``, ``entries``, ``seconds``, ``directory``, ``bytes_per_entry``, ``disk_bytes``.
    """
    parser = load_bundle_parser(config_file, bundle_root, **overrides)
    if device is not None:
        parser["device"] = f"$torch.device('{device}')"
        parser.parse(reset=True)
    cache = parser.get_parsed_content(cache_id)
    dataset = parser.get_parsed_content(dataset_id)
    bs = int(batch_size if batch_size is not None else parser.get_parsed_content("batch_size"))
    workers = int(num_workers if num_workers is not None else parser.get_parsed_content("num_workers"))
    with torch.no_grad():
        stats = cache.fill(dataset, batch_size=bs, num_workers=workers, verify=verify)
    stats.update(directory=str(cache.directory), bytes_per_entry=cache.bytes_per_entry, disk_bytes=cache.disk_bytes(),
                 stored=len(cache), corrupt=cache.corrupt, stale=cache.stale)
    print(
        f"teacher cache {cache.directory}: {stats['stored']}/{stats['entries']} entries stored "
        f"({dataset.num_samples} samples x {dataset.num_views} views x {dataset.items_per_view} items), "
        f"{stats['computed']} computed now in {stats['seconds']:.1f} s; {stats['bytes_per_entry']} bytes per entry, "
        f"{stats['disk_bytes'] / 2**20:.1f} MiB on disk; {stats['corrupt']} corrupt and {stats['stale']} stale entries recomputed."
    )
    return stats


if __name__ == "__main__":
    fire.Fire(fill)
