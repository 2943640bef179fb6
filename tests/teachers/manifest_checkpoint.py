"""Build random-weight checkpoints in an official key layout from `shared/docs/teacher_manifests`.

The manifests list every tensor key of a foundation model's released file with its shape and
dtype (and, for some, storage aliases). Tests use them to write a file that has exactly the
official layout, so the teacher loaders are checked against the real key names and shapes
without the (large, non-downloadable here) weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def manifest_root() -> Path:
    """Folder holding the manifests: ``DRD_MANIFEST_ROOT`` or ``<repo>/../shared/docs/teacher_manifests``."""
    env = os.environ.get("DRD_MANIFEST_ROOT")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "docs" / "teacher_manifests"


def load_manifest(name: str) -> dict:
    """Read ``<name>.json``; skip the test loudly when the manifests are not available."""
    path = manifest_root() / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"teacher manifest {path} not found (set DRD_MANIFEST_ROOT)")
    with open(path) as f:
        return json.load(f)


def manifest_state_dict(manifest: dict, prefix_filter: str | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the manifest's keys, shapes and dtypes; aliased keys share storage.

    Args:
        manifest: a loaded manifest.
        prefix_filter: keep only keys starting with this prefix (aliases are filtered too).
        seed: seed of the random generator.

    Returns:
        an ordered ``{key: tensor}`` dict in the manifest's key order.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape, dtype in manifest["keys"]:
        if prefix_filter is not None and not key.startswith(prefix_filter):
            continue
        dt = getattr(torch, dtype)
        if dt.is_floating_point:
            state[key] = (torch.randn(shape, generator=gen) * 0.02).to(dt)
        else:
            state[key] = torch.zeros(shape, dtype=dt)
    for alias, target in manifest.get("aliases", []):
        if target in state and (prefix_filter is None or alias.startswith(prefix_filter)):
            state[alias] = state[target]
    return state
