"""Separate, cached virtualenvs for tools whose dependencies clash with this project's pins.

``monailabel`` (its declared dependencies replace torch 2.13.0 and numpy 2.x) and
``monai-deploy-app-sdk`` (Holoscan and its CUDA wheels) run in virtualenvs of their own. Each is
described by an *environment spec*, a folder holding:

* ``requirements.txt``: installed with pip's resolver, under ``constraints.txt`` when present (the
  pins that must never move, e.g. ``torch==2.13.0``: a requirement that would replace one makes pip
  fail instead of pulling a multi-GB CUDA build);
* ``requirements-nodeps.txt`` (optional): installed afterwards with ``--no-deps`` (packages whose
  declared dependencies would break the pins, with the subset they really need listed in
  ``requirements.txt``).

The virtualenv lives in ``$DRD_VENV_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/drd_components/venvs``)
under ``<name>-<key>``, where the key is a digest of the spec files and the Python version: a changed
spec gives a new folder, an unchanged one is reused at once. Creation is serialised with a file lock
and marked complete only at the end (a half-built folder is rebuilt); ``build.json`` in it records the
time each step took.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

__all__ = ["IsolatedVenvError", "default_venv_cache", "spec_key", "venv_dir", "ensure_venv", "venv_python"]

logger = logging.getLogger(__name__)

_SPEC_FILES = ("constraints.txt", "requirements.txt", "requirements-nodeps.txt")
_COMPLETE = ".drd_complete"


class IsolatedVenvError(RuntimeError):
    """A virtualenv could not be built; the message has the failing command and pip's output."""


def default_venv_cache() -> Path:
    """``$DRD_VENV_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/drd_components/venvs``."""
    if os.environ.get("DRD_VENV_CACHE"):
        return Path(os.environ["DRD_VENV_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "drd_components" / "venvs"


def _check_spec(spec_dir: Path) -> None:
    if not (spec_dir / "requirements.txt").is_file():
        raise IsolatedVenvError(f"environment spec '{spec_dir}' has no requirements.txt.")


def spec_key(spec_dir: str | os.PathLike) -> str:
    """Digest of the spec files and of the base Python (version and installation, not the calling
    virtualenv, so that fresh clones share the cache), 16 hex digits."""
    spec_dir = Path(spec_dir)
    _check_spec(spec_dir)
    h = hashlib.sha256(f"python {platform.python_version()} {sys.base_prefix}\n".encode())
    for name in _SPEC_FILES:
        path = spec_dir / name
        h.update(f"--- {name}\n".encode() + (path.read_bytes() if path.is_file() else b"(absent)\n"))
    return h.hexdigest()[:16]


def venv_dir(spec_dir: str | os.PathLike, name: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the virtualenv of a spec lives (whether or not it is built)."""
    spec_dir = Path(spec_dir)
    return Path(cache_dir or default_venv_cache()) / f"{name or spec_dir.name}-{spec_key(spec_dir)}"


def venv_python(path: str | os.PathLike) -> Path:
    """The interpreter of a virtualenv folder."""
    return Path(path) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], log: list[dict], step: str) -> None:
    start = time.perf_counter()
    logger.info("%s: %s", step, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.append({"step": step, "seconds": round(time.perf_counter() - start, 1), "command": cmd})
    if proc.returncode != 0:
        tail = "\n".join(l for l in (proc.stdout + proc.stderr).splitlines() if "is ignored: it is neither a file" not in l)[-4000:]
        raise IsolatedVenvError(f"step '{step}' failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def ensure_venv(
    spec_dir: str | os.PathLike,
    name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
) -> Path:
    """Build the virtualenv of a spec once, or return the cached one.

    Args:
        spec_dir: folder with ``requirements.txt`` (+ optional ``constraints.txt``, ``requirements-nodeps.txt``).
        name: folder name prefix (default: the spec folder's name).
        cache_dir: where virtualenvs live (default :func:`default_venv_cache`).
        rebuild: build again even when a complete one exists.

    Returns:
        the virtualenv folder (its interpreter: :func:`venv_python`).

    Raises:
        IsolatedVenvError: a pip step failed (the command and the end of pip's output are in the message).
    """
    spec_dir = Path(spec_dir).resolve()
    target = venv_dir(spec_dir, name, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE).is_file() and not rebuild:
            return target
        if target.exists():
            shutil.rmtree(target)
        start = time.perf_counter()
        log: list[dict] = []
        t0 = time.perf_counter()
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        log.append({"step": "venv", "seconds": round(time.perf_counter() - t0, 1)})
        py = str(venv_python(target))
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        constraints = spec_dir / "constraints.txt"
        cons = ["-c", str(constraints)] if constraints.is_file() else []
        try:
            _run(pip + ["-r", str(spec_dir / "requirements.txt")] + cons, log, "requirements.txt")
            nodeps = spec_dir / "requirements-nodeps.txt"
            if nodeps.is_file():
                _run(pip + ["--no-deps", "-r", str(nodeps)] + cons, log, "requirements-nodeps.txt (--no-deps)")
        except IsolatedVenvError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        total = round(time.perf_counter() - start, 1)
        (target / "build.json").write_text(json.dumps({"spec": str(spec_dir), "seconds": total, "steps": log}, indent=1))
        (target / _COMPLETE).write_text(f"{total}\n")
        logger.info("built %s in %.1f s", target, total)
        return target
