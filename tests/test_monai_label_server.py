"""MONAI Label for real: a ``monailabel`` 0.8.5 server serves two DRD bundles and answers on loopback.

The server runs in its own virtualenv (``integrations/monai_label/server_env``: monailabel installed
with ``--no-deps`` next to torch 2.13.0 CPU and numpy 2.x; built once per machine by
:func:`drd_components.io.isolated_venv.ensure_venv`, cached under ``$DRD_VENV_CACHE``). The test copies
``busi_ultrasound_segmentation`` and ``busi_ultrasound_classification`` with seeded student weights,
starts the app ``integrations/monai_label/drd_app`` on 127.0.0.1, posts a PNG to ``/infer/<model>``
and checks the answers against the bundles' own ``inference.json`` run here: the label image equals
the bundle's segmentation (same size as the input, values 0/1), the class equals the bundle's
prediction. Then it stops the server. ``DRD_SKIP_ISOLATED_VENVS=1`` skips it (machines without the
package index).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from drd_components.data.synthetic import synthetic_ultrasound
from tests.bundle_utils import BUNDLES, REPO_ROOT

SEG, CLS = "busi_ultrasound_segmentation", "busi_ultrasound_classification"
ML_DIR = REPO_ROOT / "integrations" / "monai_label"


@pytest.fixture(scope="session")
def monailabel_python() -> Path:
    if os.environ.get("DRD_SKIP_ISOLATED_VENVS") == "1":
        pytest.skip("SKIPPED: DRD_SKIP_ISOLATED_VENVS=1 (the MONAI Label virtualenv is not built)")
    from drd_components.io.isolated_venv import ensure_venv, venv_python

    return venv_python(ensure_venv(ML_DIR / "server_env", name="monai_label"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bundle_copy(name: str, dest: Path) -> Path:
    """The bundle's configs and a seeded student in models/model.pt, its last layer scaled so that
    the labels depend on the image (a random student with its bias predicts one class everywhere)."""
    root = dest / name
    shutil.copytree(BUNDLES / name / "configs", root / "configs")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][-1]
    with torch.no_grad():
        last.weight.mul_(20.0)
        last.bias.zero_()
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _post_file(url: str, path: Path, timeout: float = 120) -> tuple[int, str, bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def _own_inference(bundle_root: Path, name: str, inputs: Path, out: Path) -> None:
    from tests.test_bundles import run_workflow

    run_workflow(name, ["inference.json"], dataset_dir=str(inputs), output_dir=str(out), ckpt_path=str(bundle_root / "models" / "model.pt"))


def test_monailabel_server_serves_drd_bundles(monailabel_python, tmp_path):
    # the app next to drd_tasks.py, copied so that MONAI Label's own folders (logs/, model/, ...) stay out of the repository
    app_root = tmp_path / "monai_label"
    shutil.copytree(ML_DIR / "drd_app", app_root / "drd_app", ignore=shutil.ignore_patterns("bin", "lib", "logs", "model", ".gitignore"))
    shutil.copy(ML_DIR / "drd_tasks.py", app_root / "drd_tasks.py")
    seg, cls = _bundle_copy(SEG, tmp_path / "bundles"), _bundle_copy(CLS, tmp_path / "bundles")
    (tmp_path / "studies").mkdir()
    (tmp_path / "in").mkdir()
    img, _ = synthetic_ultrasound(np.random.default_rng(0), 48, "oval")
    image = tmp_path / "in" / "case.png"
    Image.fromarray(img[:, 6:42]).save(image)  # 48 rows x 36 columns

    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    cmd = [str(monailabel_python), str(ML_DIR / "start_server.py"), "start_server", "--app", str(app_root / "drd_app"),
           "--studies", str(tmp_path / "studies"), "--conf", "bundles", f"{seg},{cls}", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, info = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"monailabel exited with {server.returncode}:\n{(tmp_path / 'server.log').read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        assert info is not None, f"no answer from {base}/info/ in 180 s:\n{(tmp_path / 'server.log').read_text()[-4000:]}"
        assert {SEG, CLS} <= set(info["models"]), info["models"]
        assert info["models"][SEG]["labels"] == {"lesion": 1}

        status, ctype, body = _post_file(f"{base}/infer/{SEG}?output=image", image)
        assert status == 200 and ctype.startswith("image/png"), ctype
        label = np.asarray(Image.open(io.BytesIO(body)))
        jpeg = tmp_path / "case.jpg"  # a JPEG image gets a PNG label (MONAI Label would keep .jpg: a lossy label map)
        Image.fromarray(img[:, 6:42]).save(jpeg, quality=95)
        status, ctype, body = _post_file(f"{base}/infer/{SEG}?output=image", jpeg)
        assert status == 200 and ctype.startswith("image/png"), ctype
        assert np.asarray(Image.open(io.BytesIO(body))).shape == (48, 36)
        status, _, body = _post_file(f"{base}/infer/{CLS}?output=json", image)
        result = json.loads(body)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()

    # the same student through the bundle's own inference.json, in this environment
    _own_inference(seg, SEG, tmp_path / "in", tmp_path / "own_seg")
    own = np.asarray(Image.open(tmp_path / "own_seg" / "case_seg.png"))
    assert label.shape == own.shape == (48, 36), (label.shape, own.shape)
    assert set(np.unique(label)) <= {0, 1} and 0 < label.sum() < label.size  # a label map, not a constant
    np.testing.assert_array_equal(label * 255, own)

    _own_inference(cls, CLS, tmp_path / "in", tmp_path / "own_cls")
    with open(tmp_path / "own_cls" / "predictions.csv", newline="") as f:
        own_cls = list(csv.DictReader(f))[0]
    assert result["prediction"] == own_cls["predicted_class"]
    assert set(result["probabilities"]) == {"benign", "malignant", "normal"}
    assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-4
