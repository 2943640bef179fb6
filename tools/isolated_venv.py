"""Build (once per machine) the separate virtualenvs of the MONAI Label server and the MONAI Deploy app.

Usage:
    python tools/isolated_venv.py monai_label     # prints the interpreter of the MONAI Label environment
    python tools/isolated_venv.py monai_deploy    # the same for the MONAI Deploy application
    python tools/isolated_venv.py monai_label --rebuild True

Each environment is described by a folder of requirement files (``integrations/monai_label/server_env``,
``integrations/monai_deploy/app_env``) and cached in ``$DRD_VENV_CACHE`` (default
``~/.cache/drd_components/venvs``) under a name keyed by those files: see
:mod:`drd_components.io.isolated_venv`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drd_components.io.isolated_venv import ensure_venv, venv_python  # noqa: E402

#: environment name -> spec folder
SPECS = {
    "monai_label": ROOT / "integrations" / "monai_label" / "server_env",
    "monai_deploy": ROOT / "integrations" / "monai_deploy" / "app_env",
}


def main(name: str, rebuild: bool = False) -> None:
    """Build or reuse the environment ``name`` and print its interpreter."""
    if name not in SPECS:
        raise SystemExit(f"unknown environment {name!r}; known: {sorted(SPECS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(venv_python(ensure_venv(SPECS[name], name=name, rebuild=rebuild)))


if __name__ == "__main__":
    fire.Fire(main)
