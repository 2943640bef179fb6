"""MONAI Label compatibility of the DRD bundles, checked in this environment.

``monailabel`` 0.8.5 cannot be installed beside this project's pins (its resolution replaces
torch 2.13.0+cpu with 2.14.1 through ``monai[torchvision]`` and numpy 2.4.6 with 1.26.4). These
tests check, for all 18 bundles, the config ids and metadata keys MONAI Label's ``BundleInferTask`` /
``BundleTrainTask`` read and replay its inference steps with MONAI only; a real ``monailabel``
server, in its own virtualenv, serves two bundles in ``tests/test_monai_label_server.py``.
"""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import decollate_batch
from monai.transforms import Compose, LoadImaged, SaveImaged
from PIL import Image

from drd_components.data.synthetic import synthetic_ultrasound
from tests.bundle_utils import BUNDLES, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "integrations" / "monai_label"))
from drd_tasks import bundle_labels, monailabel_to_bundle_datalist  # noqa: E402

#: ids BundleInferTask reads from configs/inference.json (the first found of each group)
INFER_IDS = ("network_def", ("preprocessing", "pre_transforms"), ("postprocessing", "post_transforms"), "inferer", "device",
             "bundle_root")
#: ids BundleTrainTask overrides in configs/train.json
TRAIN_IDS = ("network", "device", "bundle_root", "train#trainer#max_epochs", "train#dataset#data", "train#handlers",
             "validate#dataset#data")
ALL = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "inference.json").is_file())  # all 18 bundles


def _ids_present(parser, ids):
    missing = []
    for i in ids:
        group = (i,) if isinstance(i, str) else i
        if not any(g in parser for g in group):
            missing.append(group[0])
    return missing


@pytest.mark.parametrize("bundle", ALL)
def test_config_ids_monai_label_reads(bundle):
    root = BUNDLES / bundle
    infer = ConfigParser()
    infer.read_config(str(root / "configs" / "inference.json"))
    assert _ids_present(infer, INFER_IDS) == [], f"{bundle}/configs/inference.json lacks ids MONAI Label reads"
    train = ConfigParser()
    train.read_config(str(root / "configs" / "train.json"))
    assert _ids_present(train, TRAIN_IDS) == [], f"{bundle}/configs/train.json lacks ids MONAI Label overrides"
    assert (root / "configs" / "multi_gpu_train.json").is_file()
    meta = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]
    assert next(iter(meta["inputs"])) == "image" and next(iter(meta["outputs"])) == "pred"
    labels = bundle_labels(root)
    assert labels and "background" not in labels
    if "segmentation" in bundle:
        assert 0 not in labels.values()  # channel 0 is the background


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory):
    """A copy of busi_ultrasound_segmentation's configs with a student checkpoint in models/model.pt,
    the layout MONAI Label expects (random student weights: the test checks the pipeline, not skill)."""
    tmp = tmp_path_factory.mktemp("ml_seg")
    root = tmp / "busi_ultrasound_segmentation"
    shutil.copytree(BUNDLES / "busi_ultrasound_segmentation" / "configs", root / "configs")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    img, _ = synthetic_ultrasound(np.random.default_rng(0), 48, "oval")
    Image.fromarray(img[:, 6:42]).save(tmp / "case.png")  # 48 rows x 36 columns
    return root, tmp / "case.png"


def test_bundle_infer_task_pipeline_returns_label_map(seg_bundle):
    """BundleInferTask's steps: parse inference.json with bundle_root set, build network_def, load
    models/model.pt, the preprocessing transforms, the inferer, the postprocessing without SaveImaged."""
    root, image = seg_bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.config.update({"bundle_root": str(root), "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    pre = list(pre.transforms) if isinstance(pre, Compose) else pre
    assert any(isinstance(t, LoadImaged) for t in pre)  # MONAI Label swaps it for its tensor-aware loader
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    post = [t for t in (list(post.transforms) if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]
    data = Compose(pre)({"image": str(image)})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    out = Compose(post)(data)
    label = np.asarray(out["pred"]).squeeze()
    assert label.shape == (36, 48) or label.shape == (48, 36), label.shape  # back at the input size
    assert set(np.unique(label)) <= {0, 1}
    assert bundle_labels(root) == {"lesion": 1}


def test_datastore_records_become_bundle_records():
    seg = monailabel_to_bundle_datalist([{"image": "a.png", "label": "a_mask.png"}], "segmentation")
    assert seg == [{"image": "a.png", "label": "a_mask.png", "masks": ["a_mask.png"]}]
    assert monailabel_to_bundle_datalist([{"image": "a.png", "label": "2"}], "classification") == [{"image": "a.png", "label": 2}]
    with pytest.raises(ValueError, match="integer"):
        monailabel_to_bundle_datalist([{"image": "a.png", "label": "x.png"}], "classification")
    with pytest.raises(ValueError, match="lacks"):
        monailabel_to_bundle_datalist([{"image": "a.png"}], "segmentation")
