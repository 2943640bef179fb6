"""MONAI Deploy: the exported TorchScript student of hippocampus_mri_segmentation (tiny, random
weights) runs in integrations/monai_deploy/app.py (NiftiDataLoader -> MonaiBundleInferenceOperator
-> NIfTI writer) and writes a label volume of the input's size with labels from {0, 1, 2}.

monai-deploy-app-sdk 4.0.0 is not a dependency of this project (its declared dependencies bring
Holoscan's CUDA 13 wheels, cupy and tritonclient): the application runs in its own virtualenv
(``integrations/monai_deploy/app_env``: the SDK and Holoscan with ``--no-deps`` next to torch 2.13.0 CPU,
built once per machine by :func:`drd_components.io.isolated_venv.ensure_venv` and cached under
``$DRD_VENV_CACHE``). ``DRD_SKIP_ISOLATED_VENVS=1`` skips the application run. The TorchScript bundle it
consumes (metadata + inference.json inside the archive) is checked in this environment.
"""

import json
import os
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from drd_components.export import bundle_parser, export_student
from tests.bundle_utils import BUNDLES, REPO_ROOT

BUNDLE = BUNDLES / "hippocampus_mri_segmentation"
#: tiny student and patch; spacing 1 mm so the synthetic volume keeps its grid
TINY = {"unet_channels": [4, 8, 16, 16], "patch_size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0], "sw_batch_size": 1}
#: MONAI Deploy's bundle operator drops LoadImage* from ``preprocessing`` and feeds the array in memory:
#: the bundles' inference.json adds the channel with a separate EnsureChannelFirstd (not
#: LoadImaged(ensure_channel_first)), so the exported config is used as it is
DEPLOY = TINY


@pytest.fixture(scope="module")
def ts_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    parser = bundle_parser(BUNDLE, "configs/inference.json", TINY)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    with torch.no_grad():  # labels that depend on the image (a random student predicts one class everywhere)
        last.weight.mul_(20.0)
        if last.bias is not None:
            last.bias.zero_()
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


@pytest.fixture(scope="session")
def deploy_python():
    if os.environ.get("DRD_SKIP_ISOLATED_VENVS") == "1":
        pytest.skip("SKIPPED: DRD_SKIP_ISOLATED_VENVS=1 (the MONAI Deploy virtualenv is not built)")
    from drd_components.io.isolated_venv import ensure_venv, venv_python

    return venv_python(ensure_venv(REPO_ROOT / "integrations" / "monai_deploy" / "app_env", name="monai_deploy"))


def test_app_segments_a_nifti_volume(ts_bundle, deploy_python):
    import nibabel as nib

    tmp, ts, _ = ts_bundle
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 20, (20, 24, 18)).astype(np.float32)
    vol[6:14, 8:16, 5:12] += 80
    (tmp / "in").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp / "in" / "case01.nii.gz"))
    cmd = [str(deploy_python), str(REPO_ROOT / "integrations" / "monai_deploy" / "app.py"),
           "-i", str(tmp / "in"), "-o", str(tmp / "out"), "-m", str(ts)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp / "out" / "case01_seg.nii.gz"
    assert out.is_file(), f"no output; log:\n{proc.stderr[-3000:]}"
    seg = np.asarray(nib.load(str(out)).dataobj)
    assert seg.shape == vol.shape
    assert set(np.unique(seg)) <= {0, 1, 2}

    # the same student through the bundle's own inference.json, in this environment
    from tests.test_bundles import run_workflow

    run_workflow(BUNDLE.name, ["inference.json"], dataset_dir=str(tmp / "in"), output_dir=str(tmp / "own"),
                 ckpt_path=str(tmp / "model.pt"), **TINY)
    own = np.asarray(nib.load(str(tmp / "own" / "case01_seg.nii.gz")).dataobj)
    assert len(np.unique(own)) > 1, "the check needs a student whose labels vary"
    np.testing.assert_array_equal(seg, own)
