"""The laboratory's run records survive a fresh checkout: export -> restore -> export is lossless."""
import json

from tools import drd_lab


def _write_run(root, name: str, method: str, seed: int, dice: list[float], test: float) -> None:
    cfg = {"task": "busi_seg", "method": method, "seed": seed, "size": 64, "epochs": len(dice)}
    curve = [{"epoch": i + 1, "loss": 1.0 / (i + 1), "val_dice": v} for i, v in enumerate(dice)]
    result = {"name": name, "config": cfg, "best_val": max(dice), "best_epoch": dice.index(max(dice)) + 1,
              "test": {"dice": test}, "curve": curve, "train_time_s": 12.0, "epoch_s": 4.0}
    (root / name).mkdir(parents=True)
    (root / name / "result.json").write_text(json.dumps(result))


def test_restore_recreates_what_export_kept(tmp_path):
    runs = tmp_path / "runs"
    _write_run(runs, "busi_seg_vanilla_s0_aaaa", "vanilla", 0, [0.2, 0.5, 0.4, 0.45, 0.41, 0.43], 0.47)
    _write_run(runs, "busi_seg_drd_s1_bbbb", "drd", 1, [0.1, 0.3, 0.6], 0.52)
    first = tmp_path / "first.json"
    drd_lab.export(str(first), runs_dir=str(runs))

    fresh = tmp_path / "fresh"
    assert drd_lab.restore(str(first), runs_dir=str(fresh)).startswith("2 of 2")
    second = tmp_path / "second.json"
    drd_lab.export(str(second), runs_dir=str(fresh))
    assert json.loads(second.read_text()) == json.loads(first.read_text())
    rows = {r["name"]: r for r in json.loads(second.read_text())}
    assert rows["busi_seg_vanilla_s0_aaaa"]["best_epoch"] == 2
    assert rows["busi_seg_vanilla_s0_aaaa"]["last5_val"] == sum([0.5, 0.4, 0.45, 0.41, 0.43]) / 5


def test_restore_never_overwrites_a_run_measured_here(tmp_path):
    runs = tmp_path / "runs"
    _write_run(runs, "busi_seg_vanilla_s0_aaaa", "vanilla", 0, [0.2, 0.5], 0.47)
    exported = tmp_path / "e.json"
    drd_lab.export(str(exported), runs_dir=str(runs))
    rows = json.loads(exported.read_text())
    rows[0]["test"] = {"dice": 0.99}  # an older record of the same run must not replace the local one
    exported.write_text(json.dumps(rows))
    assert drd_lab.restore(str(exported), runs_dir=str(runs)).startswith("0 of 1")
    local = json.loads((runs / "busi_seg_vanilla_s0_aaaa" / "result.json").read_text())
    assert local["test"] == {"dice": 0.47} and "restored_from" not in local


def test_curve_legend_names_the_default_form_and_what_differs():
    base = {k: v.default for k, v in drd_lab.inspect.signature(drd_lab.run).parameters.items()}
    d_form = {**base, "task": "busi_seg", "method": "drd", "cka": "positions", "cka_detach": True,
              "hybrid_skips": "teacher"}
    assert drd_lab._short_label(d_form) == "D"
    assert drd_lab._short_label({**d_form, "hybrid_k": 1, "use_cka": False}) == "D hybrid_k=1 use_cka=False"
    assert drd_lab._short_label({**base, "method": "drd", "cka": "positions"}) == "drd cka=positions"
    assert drd_lab._short_label({**base, "method": "vanilla"}) == "vanilla"
