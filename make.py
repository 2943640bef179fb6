#!/usr/bin/env python3
"""Project entry point that needs nothing but python3.

    python3 make.py demo    # create/reuse .venv, install, run the quickstart: LiteMedSAM -> ResNet-18 on RetinaMNIST, DRD vs vanilla
    python3 make.py test    # create/reuse .venv, install, run the test suite

Extra arguments after the command are passed on (to tools/quickstart.py or to pytest).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DRD_VENV", ROOT / ".venv"))
# torch is pinned: its CPU build for this version is what the project is tested with.
TORCH = os.environ.get("DRD_TORCH_SPEC", "torch==2.13.0")


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(*cmd: str, **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def ensure_env() -> Path:
    """Create the virtualenv and install the package with its test extra, once per setup.cfg."""
    if not _python().exists():
        print(f"creating virtualenv {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = str(_python())
    stamp = VENV / ".drd_installed"
    wanted = hashlib.sha256((ROOT / "setup.cfg").read_bytes() + TORCH.encode()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        _run(py, "-m", "pip", "install", "-q", "--upgrade", "pip")
        if subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0:
            _run(py, "-m", "pip", "install", "-q", TORCH)
        _run(py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]")
        stamp.write_text(wanted)
    return Path(py)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "install"):
        print(__doc__)
        return 2
    py = str(ensure_env())
    env = dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"))
    if argv[0] == "demo":
        return subprocess.run([py, str(ROOT / "tools" / "quickstart.py"), *argv[1:]], cwd=ROOT, env=env).returncode
    if argv[0] == "test":
        return subprocess.run([py, "-m", "pytest", *argv[1:]], cwd=ROOT, env=env).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
