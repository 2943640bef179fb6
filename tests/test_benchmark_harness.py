"""tools/benchmark_methods.py: label fractions, reports, and resuming without redoing finished runs."""

import csv
import json

import pytest

from drd_components.data.synthetic import write_synthetic_busi
from tests.bundle_utils import write_standin_teacher
from tools import benchmark_methods as bm


def test_stratified_fraction_keeps_every_class_and_depends_on_seed():
    records = [{"image": f"{c}_{i}", "label": c} for c in range(3) for i in range(20)]
    part = bm._stratified_take(records, 0.1, seed=0)
    assert sorted(r["label"] for r in part) == [0, 0, 1, 1, 2, 2]
    assert bm._stratified_take(records, 0.1, seed=1) != part
    assert bm._stratified_take(records, 1.0, seed=0) == records
    with pytest.raises(ValueError, match="fraction"):
        bm._stratified_take(records, 0.0, seed=0)


def test_reports_from_results(tmp_path):
    results = [
        {"method": m, "seed": s, "fraction": f, "test_accuracy": 0.5 + 0.1 * s, "test_macro_f1": 0.4,
         "test_balanced_accuracy": 0.4, "n_test": 10, "trainable_params": 1000, "deployed_params": 2000,
         "deployed": "student", "epoch_s": 1.0, "first_epoch_s": 1.5, "peak_rss_mib": 100.0, "peak_cuda_mib": None,
         "latency_b1_ms": 1.0, "latency_b32_ms": 3.0, "evaluated": "x", "hash": "h"}
        for m in ("vanilla", "drd") for s in (0, 1) for f in (0.1, 1.0)
    ]
    bm.write_reports(tmp_path, results, "t")
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(rows) == 8
    md = (tmp_path / "summary.md").read_text()
    assert "| drd | student | 0.550 ± 0.071 (2) | 0.550 ± 0.071 (2) |" in md
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_harness_runs_then_resumes_without_redoing_finished_runs(tmp_path, monkeypatch, capsys):
    data = write_synthetic_busi(tmp_path / "data" / "busi", n_per_class=7, size=32, seed=1)
    teacher = write_standin_teacher(tmp_path / "teacher.pt", block_inplanes=(8, 16, 32, 64))
    kwargs = dict(output=str(tmp_path / "out"), data_root=str(data.parent), methods="vanilla", seeds=1,
                  fractions="1.0", image_size=32, epochs=1, batch_size=4, teacher_overlay="teacher_standin.json",
                  teacher_checkpoint=str(teacher), latency_repeats=1, cost=False,
                  extra_overrides={"teacher_def#block_inplanes": [8, 16, 32, 64],
                                   "network_def#block_inplanes": [8, 16, 32, 64]})
    first = bm.main(**kwargs)
    assert len(first) == 1, capsys.readouterr().out
    result = first[0]
    assert result["method"] == "vanilla" and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["trainable_params"] == result["deployed_params"] > 0
    assert result["latency_b1_ms"] > 0 and result["epoch_s"] > 0
    for name in ("runs.csv", "summary.md", "summary.png"):
        assert (tmp_path / "out" / name).is_file()

    def no_rerun(*args, **kw):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(bm, "_child", no_rerun)
    again = bm.main(**kwargs)
    assert again == first
    assert "done before, skipped" in capsys.readouterr().out
    # a changed setting is a different run
    with pytest.raises(AssertionError, match="started again"):
        bm.main(**dict(kwargs, epochs=2))
    assert json.loads(next((tmp_path / "out" / "runs").glob("vanilla_*/spec.json")).read_text())["seed"] == 0
