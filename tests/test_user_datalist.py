"""Your own data: Decathlon datalists in every bundle, tools/make_datalist.py and grouped splits.

* :func:`grouped_split` never puts one group (patient, video) in two splits, for many seeds and
  group-size mixes, and follows the fractions;
* ``make_datalist`` writes relative paths, groups from a file-name regex or a CSV column, and
  clear errors for files the grouping does not cover;
* ``load_user_datalist`` resolves relative paths (JSON folder, then ``dataset_dir``) and class names;
* a bundle trains, validates and evaluates from a user datalist with relative paths, and a broken
  user datalist fails at start-up with every problem listed at once.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from drd_components.data.seg_transforms import LoadUnionMaskd
from drd_components.data.user_datalist import grouped_split, load_user_datalist, make_datalist, split_summary
from drd_components.data.validation import DataValidationError
from tests.bundle_utils import BUNDLES, REPO_ROOT, write_standin_teacher


def _frames(root: Path, videos: int = 6, per_video: int = 3, size: int = 32, mask_ext: str = ".png") -> tuple[Path, Path]:
    """``images/video<v>_frame<f>.jpg`` + ``masks/<same stem><mask_ext>`` (0/1 masks), a few videos."""
    rng = np.random.default_rng(0)
    img_dir, mask_dir = root / "images", root / "masks"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for v in range(videos):
        for f in range(per_video):
            stem = f"video{v:02d}_frame{f:03d}"
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(img_dir / f"{stem}.jpg", quality=95)
            c = rng.integers(8, size - 8, 2)
            mask = (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < 36).astype(np.uint8)  # 0/1, as many tools write them
            Image.fromarray(mask).save(mask_dir / f"{stem}{mask_ext}")
    return img_dir, mask_dir


# ------------------------------------------------------------------------------------------------
# grouped split
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_grouped_split_never_leaks_a_group(seed):
    rng = random.Random(seed)
    items = [{"id": f"{g}_{i}", "group": f"patient{g}"} for g in range(rng.randint(5, 40)) for i in range(rng.randint(1, 12))]
    parts = grouped_split(items, "group", {"training": 0.7, "validation": 0.15, "test": 0.15}, seed=seed)
    groups = {name: {r["group"] for r in recs} for name, recs in parts.items()}
    assert not groups["training"] & groups["validation"]
    assert not groups["training"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert sorted(r["id"] for recs in parts.values() for r in recs) == sorted(i["id"] for i in items)  # nothing lost or doubled
    assert all(parts[name] for name in parts)  # every split gets a group
    assert split_summary(parts)["leaked_groups"] == []


def test_grouped_split_follows_the_fractions_and_the_seed():
    items = [{"id": f"{g}_{i}", "group": g} for g in range(100) for i in range(5)]
    parts = grouped_split(items, "group", {"training": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    assert [len(parts[k]) for k in ("training", "validation", "test")] == [400, 50, 50]
    assert grouped_split(list(reversed(items)), "group", {"training": 0.8, "validation": 0.1, "test": 0.1}, seed=3) == parts
    assert grouped_split(items, "group", {"training": 0.8, "validation": 0.1, "test": 0.1}, seed=4) != parts
    with pytest.raises(ValueError, match="cannot fill"):
        grouped_split(items[:10], "group", {"training": 0.8, "validation": 0.1, "test": 0.1})
    with pytest.raises(ValueError, match="no 'group'"):
        grouped_split([{"id": 1}], "group")


# ------------------------------------------------------------------------------------------------
# make_datalist
# ------------------------------------------------------------------------------------------------
def test_make_datalist_groups_by_file_name_regex(tmp_path):
    img_dir, mask_dir = _frames(tmp_path / "polyps")
    out = tmp_path / "polyps" / "datalist.json"
    summary = make_datalist(img_dir, out, mask_dir=mask_dir, group_regex=r"^(video\d+)_", val_fraction=0.2, test_fraction=0.2)
    doc = json.loads(out.read_text())
    assert summary["leaked_groups"] == [] and summary["task"] == "segmentation"
    videos = {k: {r["group"] for r in doc[k]} for k in ("training", "validation", "test")}
    assert all(videos.values()) and sum(len(v) for v in videos.values()) == 6
    assert not (videos["training"] & videos["validation"]) and not (videos["training"] & videos["test"])
    for rec in doc["training"] + doc["validation"] + doc["test"]:
        assert rec["image"].startswith("images/") and rec["label"].startswith("masks/")  # relative to the JSON's folder
        assert Path(rec["image"]).name.startswith(rec["group"])

    small = make_datalist(img_dir, tmp_path / "small.json", mask_dir=mask_dir, group_regex=r"^(video\d+)_", max_items=8)
    assert sum(p["items"] for p in small["parts"].values()) == 9 and small["leaked_groups"] == []  # whole videos of 3 frames

    with pytest.raises(ValueError, match="does not match 18 file name"):
        make_datalist(img_dir, tmp_path / "x.json", mask_dir=mask_dir, group_regex=r"^patient(\d+)")


def test_make_datalist_groups_from_a_csv_column(tmp_path):
    img_dir, mask_dir = _frames(tmp_path / "d", videos=6, per_video=2)
    table = tmp_path / "frames.csv"
    rows = ["file,patient"] + [f"{p.name},P{int(p.stem[5:7]) // 2}" for p in sorted(img_dir.iterdir())]  # 2 videos per patient
    table.write_text("\n".join(rows) + "\n")
    summary = make_datalist(img_dir, tmp_path / "dl.json", mask_dir=mask_dir, group_csv=table, group_column="patient",
                            val_fraction=0.25, test_fraction=0.25)
    doc = json.loads((tmp_path / "dl.json").read_text())
    patients = {k: {r["group"] for r in doc[k]} for k in ("training", "validation", "test")}
    assert summary["leaked_groups"] == [] and sorted(p for v in patients.values() for p in v) == ["P0", "P1", "P2"]
    assert [summary["parts"][k]["items"] for k in ("training", "validation", "test")] == [4, 4, 4]
    with pytest.raises(ValueError, match="2 group\\(s\\) cannot fill"):  # two patients cannot fill three splits
        table.write_text("file,patient\n" + "".join(f"{p.name},P{int(p.stem[5:7]) // 3}\n" for p in sorted(img_dir.iterdir())))
        make_datalist(img_dir, tmp_path / "dl2.json", mask_dir=mask_dir, group_csv=table, group_column="patient")


def test_make_datalist_csv_needs_enough_groups_and_every_image(tmp_path):
    img_dir, mask_dir = _frames(tmp_path / "d", videos=3, per_video=2)
    table = tmp_path / "frames.csv"
    table.write_text("file,video\n" + "".join(f"{p.stem},{p.stem[:7]}\n" for p in sorted(img_dir.iterdir())[:-1]))
    with pytest.raises(ValueError, match="1 image\\(s\\) have no 'video'.*video02_frame001.jpg"):
        make_datalist(img_dir, tmp_path / "dl.json", mask_dir=mask_dir, group_csv=table, group_column="video")
    with pytest.raises(ValueError, match="'site' is not a column"):
        make_datalist(img_dir, tmp_path / "dl.json", mask_dir=mask_dir, group_csv=table, group_column="site")


def test_make_datalist_classification_from_class_folders(tmp_path):
    for c, name in enumerate(("benign", "malignant")):
        for i in range(10):
            (tmp_path / "cls" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 * c + i, np.uint8)).save(tmp_path / "cls" / name / f"{name}{i}.png")
    summary = make_datalist(tmp_path / "cls", tmp_path / "out" / "dl.json", val_fraction=0.2, test_fraction=0.2)
    doc = json.loads((tmp_path / "out" / "dl.json").read_text())
    assert doc["class_names"] == ["benign", "malignant"] and summary["parts"]["test"]["labels"] == {"0": 2, "1": 2}
    assert doc["training"][0]["image"].startswith("../cls/")


def test_make_datalist_cli_prints_the_split(tmp_path):
    img_dir, mask_dir = _frames(tmp_path / "p", videos=5, per_video=2)
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make_datalist.py"), "--image_dir", str(img_dir), "--mask_dir",
                           str(mask_dir), "--output_file", str(tmp_path / "dl.json"), "--group_regex", r"^(video\d+)"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "groups in more than one split: 0" in proc.stdout and "training" in proc.stdout


# ------------------------------------------------------------------------------------------------
# load_user_datalist
# ------------------------------------------------------------------------------------------------
def test_load_user_datalist_resolves_paths_and_class_names(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    for n in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "img" / n)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "near.png").write_bytes((data / "img" / "a.png").read_bytes())
    doc = {"training": [{"image": "near.png", "label": "malignant"}, {"image": "img/a.png", "label": 0}],
           "validation": ["img/b.png"], "test": [{"image": str(data / "img" / "c.png"), "label": "1"}],
           "numTraining": 2, "class_names": ["benign", "malignant"]}
    (lists / "dl.json").write_text(json.dumps(doc))
    out = load_user_datalist(lists / "dl.json", data, tmp_path / "out" / "datalist.json", task="classification",
                             class_names=["benign", "malignant"])
    assert set(out) == {"training", "validation", "test"}
    assert out["training"][0] == {"image": str((lists / "near.png").resolve()), "label": 1}  # the JSON's folder first
    assert out["training"][1]["image"] == str((data / "img" / "a.png").resolve())  # then dataset_dir
    assert out["validation"] == [{"image": str((data / "img" / "b.png").resolve())}]
    assert out["test"][0]["label"] == 1
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == out

    seg = load_user_datalist(lists / "dl.json", data, task="segmentation", mask_key="masks")
    assert seg["test"][0]["masks"] == [seg["test"][0]["label"]]  # BUSI-style bundles read a list of masks


def test_load_user_datalist_errors_name_the_file(tmp_path):
    with pytest.raises(DataValidationError, match="'datalist_file' = .*missing.json' does not exist"):
        load_user_datalist(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{\"training\": [")
    with pytest.raises(DataValidationError, match="bad.json' is not valid JSON"):
        load_user_datalist(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataValidationError, match="holds a JSON list: expected an object"):
        load_user_datalist(tmp_path / "list.json")


def test_union_mask_loader_reads_0_1_masks_with_a_0_255_threshold(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 1
    Image.fromarray(mask).save(tmp_path / "m01.png")
    Image.fromarray(mask.astype(bool)).save(tmp_path / "m1bit.png")
    Image.fromarray(mask * 255).save(tmp_path / "m255.png")
    for name in ("m01.png", "m1bit.png", "m255.png"):
        out = LoadUnionMaskd("label", threshold=127)({"label": str(tmp_path / name), "image": torch.zeros(1, 12, 10)})
        assert int(out["label"].sum()) == 12, name


# ------------------------------------------------------------------------------------------------
# a bundle on a user datalist
# ------------------------------------------------------------------------------------------------
BUNDLE = "polyp_endoscopy_segmentation"


def _parser(**overrides) -> ConfigParser:
    root = BUNDLES / BUNDLE
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json")])
    parser.update(dict(overrides, bundle_root=str(root)))
    return parser


def test_broken_user_datalist_lists_every_problem_at_start_up(tmp_path):
    img_dir, mask_dir = _frames(tmp_path / "p", videos=3, per_video=1)
    doc = {"training": [{"image": "images/video00_frame000.jpg", "label": "masks/video00_frame000.png"},
                        {"image": "images/nope.jpg", "label": "masks/video01_frame000.png"}],
           "validation": [{"image": "images/video01_frame000.jpg", "label": "masks/gone.png"}]}
    (tmp_path / "p" / "dl.json").write_text(json.dumps(doc))
    parser = _parser(datalist_file=str(tmp_path / "p" / "dl.json"), output_dir=str(tmp_path / "out"))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("datalist")
    text = str(info.value) + "".join(str(a) for a in getattr(info.value, "args", ()))
    cause = info.value
    while cause is not None and not isinstance(cause, DataValidationError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, DataValidationError), text
    problems = "\n".join(cause.problems)
    assert len(cause.problems) == 3, problems
    assert "nope.jpg: image file not found" in problems
    assert "gone.png: 'label' file not found" in problems
    assert "split 'test' is missing or empty" in problems


def test_bundle_trains_and_evaluates_from_a_user_datalist_with_relative_paths(tmp_path):
    from tests.test_bundles import run_workflow

    img_dir, mask_dir = _frames(tmp_path / "mydata", videos=6, per_video=2)
    make_datalist(img_dir, tmp_path / "mydata" / "datalist.json", mask_dir=mask_dir, group_regex=r"^(video\d+)_",
                  val_fraction=0.2, test_fraction=0.2)
    teacher = write_standin_teacher(tmp_path / "teacher.pt", spatial_dims=2, in_channels=3, block_inplanes=(8, 8, 16, 16))
    out = tmp_path / "out"
    common = {"datalist_file": str(tmp_path / "mydata" / "datalist.json"), "dataset_dir": str(tmp_path / "nowhere"),
              "output_dir": str(out), "image_size": [32, 32], "batch_size": 2, "num_workers": 0}
    wf = run_workflow(BUNDLE, ["train.json", "teacher_standin.json"], **common, teacher_checkpoint=str(teacher),
                      **{"teacher_def#block_inplanes": [8, 8, 16, 16]}, num_epochs=1, val_interval=1)
    used = json.loads((out / "datalist.json").read_text())
    written = json.loads((tmp_path / "mydata" / "datalist.json").read_text())
    assert [Path(r["image"]).name for r in used["training"]] == [Path(r["image"]).name for r in written["training"]]
    assert all(Path(r["image"]).is_absolute() for r in used["training"])
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    assert (out / "model.pt").is_file()
    run_workflow(BUNDLE, ["train.json", "evaluate.json"], **common)
    rows = dict(line.split(",")[:2] for line in (out / "eval" / "metrics.csv").read_text().splitlines())
    assert 0.0 <= float(rows["test_mean_dice"]) <= 1.0
