"""Untrusted files: pickled payloads in checkpoints, downloads over HTTP, archive members.

File-URL download checks and the basic zip cases are in tests/test_io.py; this file adds what an
attacker or a broken network would do.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from drd_components.handlers.resume import ResumeFromLatestCheckpoint
from drd_components.io import DownloadError, UnsafeArchiveError, download_file, safe_extract_zip
from drd_components.teachers import ResNetStandInTeacher
from drd_components.teachers.checkpoint import CheckpointError, load_checkpoint_file

MARKER_ENV = "DRD_TEST_PAYLOAD_MARKER"


class Payload:
    """Unpickling this object would create a marker file (stands in for ``os.system('...')``)."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ[MARKER_ENV]),))


class ShellPayload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ[MARKER_ENV]}",))


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "executed"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


@pytest.mark.parametrize("payload", [Payload, ShellPayload], ids=["reduce_touch", "os_system"])
@pytest.mark.parametrize("container", ["flat", "nested", "legacy_pickle"])
def test_checkpoint_with_pickled_object_is_refused_and_not_executed(tmp_path, marker, payload, container):
    path = tmp_path / "evil.pt"
    tensors = {"conv1.weight": torch.zeros(2)}
    if container == "flat":
        torch.save({**tensors, "evil": payload()}, path)
    elif container == "nested":
        torch.save({"state_dict": tensors, "meta": {"args": [payload()]}}, path)
    else:  # a plain pickle file, not torch's zip format
        path.write_bytes(pickle.dumps({"state_dict": tensors, "evil": payload()}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError):
        ResNetStandInTeacher(block_inplanes=(8, 16, 32, 64), checkpoint=str(path))
    assert not marker.exists()  # nothing was executed


def test_resume_checkpoint_with_payload_stops_training_unexecuted(tmp_path, marker):
    torch.save({"box": {"w": torch.zeros(1)}, "evil": ShellPayload()}, tmp_path / "resume_checkpoint_epoch=1.pt")

    class Box:
        def state_dict(self):
            return {"w": torch.zeros(1)}

        def load_state_dict(self, state):
            pass

    engine = Engine(lambda e, b: None)
    ResumeFromLatestCheckpoint(tmp_path, {"box": Box()}).attach(engine)
    with pytest.raises(CheckpointError, match="holds pickled objects other than tensors .* is refused"):
        engine.run([0], max_epochs=1)
    assert not marker.exists()


def test_safetensors_checkpoint_loads(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_checkpoint_file(tmp_path / "w.safetensors")["w"], torch.arange(3.0))


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    truncate = False

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2] if self.truncate else self.body)
        self.wfile.flush()
        if self.truncate:
            self.connection.close()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_download_verified_and_mismatch_deleted(http_server, tmp_path):
    body = os.urandom(200_000)
    _Handler.body, _Handler.truncate = body, False
    url = f"http://127.0.0.1:{http_server.server_address[1]}/weights.bin"
    good = download_file(url, tmp_path / "ok" / "w.bin", sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert good.read_bytes() == body
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(url, tmp_path / "bad" / "w.bin", sha256="f" * 64, progress=False)
    assert list((tmp_path / "bad").iterdir()) == []  # neither the file nor a partial one


def test_http_download_cut_off_leaves_nothing(http_server, tmp_path):
    body = os.urandom(200_000)
    _Handler.body, _Handler.truncate = body, True
    url = f"http://127.0.0.1:{http_server.server_address[1]}/weights.bin"
    with pytest.raises(DownloadError):
        download_file(url, tmp_path / "cut" / "w.bin", sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert list((tmp_path / "cut").iterdir()) == []


def test_existing_file_with_wrong_checksum_is_replaced(http_server, tmp_path):
    body = os.urandom(10_000)
    _Handler.body, _Handler.truncate = body, False
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"tampered")
    url = f"http://127.0.0.1:{http_server.server_address[1]}/w.bin"
    download_file(url, dest, sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert dest.read_bytes() == body


@pytest.mark.parametrize(
    "member,message",
    [("bundle\\..\\..\\evil", r"'\.\.'"), ("\\evil", "absolute"), ("bundle/./../../evil", r"'\.\.'")],
    ids=["backslash_dotdot", "backslash_absolute", "dot_then_dotdot"],
)
def test_zip_traversal_variants_are_refused(tmp_path, member, message):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bundle/ok.txt", "ok")
        zf.writestr(zipfile.ZipInfo(member), "x")
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "bundle").exists()
    assert not (tmp_path / "evil").exists()
