"""MONAI Deploy: the exported TorchScript student of hippocampus_mri_segmentation (tiny, random
weights) runs in integrations/monai_deploy/app.py (NiftiDataLoader -> MonaiBundleInferenceOperator
-> NIfTI writer) and writes a label volume of the input's size with labels from {0, 1, 2}.

monai-deploy-app-sdk 4.0.0 installs beside torch 2.13.0 / monai 1.6.1 / numpy 2.4.6 but brings
Holoscan (CUDA 13 wheels, ~1 GB) and highdicom, so it is not a dependency of this project: the
application test is skipped when ``monai.deploy`` cannot be imported. The TorchScript bundle it
consumes (metadata + inference.json inside the archive) is checked without the SDK.
"""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from drd_components.export import bundle_parser, export_student
from tests.bundle_utils import BUNDLES, REPO_ROOT

BUNDLE = BUNDLES / "hippocampus_mri_segmentation"
#: tiny student and patch; spacing 1 mm so the synthetic volume keeps its grid
TINY = {"unet_channels": [4, 8, 16, 16], "patch_size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0], "sw_batch_size": 1}
#: MONAI Deploy's bundle operator drops LoadImage* from ``preprocessing`` and feeds the array in memory,
#: so the channel must come from a separate EnsureChannelFirstd, not from LoadImaged(ensure_channel_first);
#: the archive's config gets that here (bundle-side fix proposed to the lead)
DEPLOY = dict(TINY, **{"preprocessing#transforms#0": {"_target_": "EnsureChannelFirstd", "keys": "image",
                                                      "channel_dim": "no_channel"}})


@pytest.fixture(scope="module")
def ts_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    parser = bundle_parser(BUNDLE, "configs/inference.json", TINY)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp / "model.pt")
    report = export_student(BUNDLE, tmp / "model.pt", "torchscript", overrides=DEPLOY)
    return tmp, tmp / "model.ts", report


def test_torchscript_bundle_carries_configs(ts_bundle):
    _, ts, report = ts_bundle
    assert report["parity"]["passed"]
    with zipfile.ZipFile(ts) as archive:
        names = archive.namelist()
        inference = next(n for n in names if n.endswith("extra/inference.json"))
        config = json.loads(archive.read(inference))
        meta = json.loads(archive.read(next(n for n in names if n.endswith("extra/metadata.json"))))
    assert config["patch_size"] == [16, 16, 16] and config["bundle_root"] == "."
    assert {"preprocessing", "inferer", "postprocessing"} <= set(config)
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3


@pytest.mark.skipif(importlib.util.find_spec("monai.deploy") is None,
                    reason="monai-deploy-app-sdk is not installed (optional: pip install -r integrations/monai_deploy/requirements.txt)")
def test_app_segments_a_nifti_volume(ts_bundle):
    import nibabel as nib

    tmp, ts, _ = ts_bundle
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, (20, 24, 18)).astype(np.float32)
    vol[6:14, 8:16, 5:12] += 80
    (tmp / "in").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp / "in" / "case01.nii.gz"))
    cmd = [sys.executable, str(REPO_ROOT / "integrations" / "monai_deploy" / "app.py"),
           "-i", str(tmp / "in"), "-o", str(tmp / "out"), "-m", str(ts)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp / "out" / "case01_seg.nii.gz"
    assert out.is_file(), f"no output; log:\n{proc.stderr[-3000:]}"
    seg = np.asarray(nib.load(str(out)).dataobj)
    assert seg.shape == vol.shape
    assert set(np.unique(seg)) <= {0, 1, 2}
