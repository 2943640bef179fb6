"""Helpers to run bundles from tests the way users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"


def run_bundle(
    bundle: str, config_files: list[str], overrides: dict, run_id: str | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run [run_id] --config_file [...] --key value ...`` in the bundle folder.

    Raises:
        AssertionError: with the end of the log when the command fails.
    """
    root = BUNDLES / bundle
    files = "[" + ",".join(f"'configs/{c}'" for c in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", files, "--bundle_root", str(root), "--meta_file", "configs/metadata.json"]
    cmd += ["--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({' '.join(cmd)}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def write_standin_teacher(path: Path, seed: int = 0, **kwargs) -> Path:
    """Save a random stand-in teacher checkpoint (flat MONAI ResNet state dict), seeded so that runs repeat."""
    from drd_components.teachers import ResNetStandInTeacher

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = ResNetStandInTeacher(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.net.state_dict(), path)
    return path
