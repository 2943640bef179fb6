"""The checked-in bundles are exactly what tools/generate_bundles.py writes, and they share the contract ids."""

from __future__ import annotations

import json

import pytest

from tests.bundle_utils import BUNDLES
from tools.bundle_specs import BUNDLES as SPECS
from tools.generate_bundles import generate, render, stale_files

#: ids every train.json provides (overlays, tools and tests rely on them)
CONTRACT_IDS = ("bundle_root", "dataset_dir", "output_dir", "ckpt_dir", "device", "rank", "is_not_rank0", "seed", "task",
                "spatial_dims", "num_classes", "class_names", "in_channels", "train_size", "num_epochs", "batch_size",
                "learning_rate", "amp", "datalist", "network_def", "network", "teacher_def", "teacher", "projectors",
                "task_loss", "loss", "optimizer", "lr_scheduler", "train_save_dict", "train", "validate", "initialize",
                "training", "run")


def test_checked_in_bundles_are_up_to_date():
    stale = stale_files()
    assert not stale, "run `python -m tools.generate_bundles generate`; out of date:\n" + "\n".join(stale)


def test_collection_has_the_18_tasks_with_model_zoo_names():
    assert len(SPECS) == 18 and len({s.name for s in SPECS}) == 18
    assert sorted(s.row for s in SPECS) == list(range(1, 19))
    for spec in SPECS:
        assert spec.task in spec.name  # MONAI Label infers the task type from the folder name
        assert (BUNDLES / spec.name / "configs" / "train.json").is_file()


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_train_config_has_the_contract_ids_and_every_hyper_parameter_is_documented(spec):
    train = json.loads((BUNDLES / spec.name / "configs" / "train.json").read_text())
    missing = [k for k in CONTRACT_IDS if k not in train]
    assert not missing, f"{spec.name}/configs/train.json lacks {missing}"
    assert train["train"]["trainer"]["_target_"] == "drd_components.engines.DRDTrainer"
    readme = (BUNDLES / spec.name / "docs" / "README.md").read_text()
    for key, value in train.items():
        if isinstance(value, (int, float, bool, list)) and key not in ("imports", "initialize", "training", "class_names"):
            assert f"`{key}`" in readme, f"{spec.name}: hyper-parameter '{key}' is not in the README table"
    for section in ("## Data", "## Teacher", "## Training configuration", "## Performance", "## Commands", "## Limitations",
                    "## References"):
        assert section in readme


def test_generate_writes_a_complete_self_contained_bundle(tmp_path):
    written = generate(names="spleen_ct_segmentation", bundles_dir=tmp_path)
    root = tmp_path / "spleen_ct_segmentation"
    for rel in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/multi_gpu_train.json",
                "configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE",
                "large_files.yml"):
        assert (root / rel).is_file(), rel
    assert len(written) == len(render(SPECS[13]))
    text = (root / "configs" / "train.json").read_text()
    assert "/work/" not in text and "../" not in text  # nothing points back into this repository


def test_unknown_bundle_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown bundle"):
        generate(names="no_such_segmentation", bundles_dir=tmp_path)
