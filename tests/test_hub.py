"""Official weights by name: catalogue, cache lookup, fetch against a loopback server standing in for the hub."""

from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from volsam import hub
from volsam.checkpoint import CheckpointError
from volsam.cli import main
from volsam.models import resolve_model
from volsam.registry import build_model, list_models


def _rule_filled(name: str) -> bytes:
    """A checkpoint of architecture ``name`` whose tensors follow a rule (no randomness), as torch.save bytes."""
    model = build_model(name)
    sd = {}
    for i, (k, v) in enumerate(model.state_dict().items()):
        n = v.numel()
        sd[k] = (torch.arange(n, dtype=torch.float32).reshape(v.shape) % 7 - 3) * 0.01 * (1 + i % 3)
    buf = io.BytesIO()
    torch.save({"model_state_dict": sd}, buf)
    return buf.getvalue()


class _Hub:
    """Loopback HTTP server: HEAD/GET with Range, the Hugging Face resolve headers, request log, an optional
    cut of the first GET after ``cut_at`` bytes, and an ETag that can be forged."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_at: int | None = None
        self.etag: dict[str, str] = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _head(self, code: int, length: int, extra: dict[str, str]) -> None:
                data = owner.files[self.path]
                self.send_response(code)
                self.send_header("Content-Length", str(length))
                self.send_header("ETag", f'"{owner.etag[self.path]}"')
                self.send_header("X-Repo-Commit", "c" * 40)
                self.send_header("Accept-Ranges", "bytes")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                del data

            def do_HEAD(self):
                owner.requests.append(("HEAD", self.path, None))
                if self.path not in owner.files:
                    self.send_error(404)
                    return
                self._head(200, len(owner.files[self.path]), {})

            def do_GET(self):
                rng = self.headers.get("Range")
                owner.requests.append(("GET", self.path, rng))
                if self.path not in owner.files:
                    self.send_error(404)
                    return
                data = owner.files[self.path]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if rng:
                    extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    self._head(206, len(data) - start, extra)
                else:
                    self._head(200, len(data), {})
                body = data[start:]
                if owner.cut_at is not None:
                    body, owner.cut_at = body[: owner.cut_at], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def mini_bytes() -> dict[str, bytes]:
    return {"sam_med3d_mini": _rule_filled("sam_med3d_mini"), "fastsam3d_mini": _rule_filled("fastsam3d_mini")}


@pytest.fixture()
def server(mini_bytes, monkeypatch, tmp_path):
    srv = _Hub(
        {
            "/org/mini/resolve/main/mini.pth": mini_bytes["sam_med3d_mini"],
            "/plain/mini.pth": mini_bytes["sam_med3d_mini"],
            "/plain/other.pth": mini_bytes["fastsam3d_mini"],
        }
    )
    monkeypatch.setenv("VOLSAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VOLSAM_HUB_ENDPOINT", srv.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield srv
    srv.close()


def _entry(monkeypatch, **kw) -> hub.OfficialWeights:
    fields = {"architecture": "sam_med3d_mini", "description": "test", "source": "loopback", "licence": "none"}
    entry = hub.OfficialWeights(**{**fields, **kw})
    monkeypatch.setitem(hub.OFFICIAL_WEIGHTS, entry.name, entry)
    return entry


def test_catalogue_names_differ_from_architectures_and_architectures_exist():
    names = [w.name for w in hub.list_weights()]
    assert "sam_med3d_turbo" in names and "fastsam3d_official" in names
    for w in hub.list_weights():
        assert w.name not in list_models(), w.name
        assert w.architecture in list_models(), w.architecture
        assert w.manual or w.download_url().startswith("https://")


def test_register_refuses_architecture_names_unknown_architectures_and_duplicates(monkeypatch):
    monkeypatch.setattr(hub, "OFFICIAL_WEIGHTS", dict(hub.OFFICIAL_WEIGHTS))
    base = {"description": "d", "source": "s", "licence": "l", "url": "https://example.org/x.pth"}
    with pytest.raises(ValueError, match="architecture name"):
        hub.register_weights(hub.OfficialWeights(name="sam_med3d", architecture="sam_med3d", **base))
    with pytest.raises(ValueError, match="unknown architecture"):
        hub.register_weights(hub.OfficialWeights(name="x", architecture="nope", **base))
    with pytest.raises(ValueError, match="already registered"):
        hub.register_weights(hub.OfficialWeights(name="sam_med3d_turbo", architecture="sam_med3d", **base))
    with pytest.raises(ValueError, match="either repo_id"):
        hub.OfficialWeights(name="y", architecture="sam_med3d", description="d", source="s", licence="l")


def test_weights_list_names_turbo_and_fastsam3d_with_sources(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth" in out
    assert "https://huggingface.co/techlove/FastSAM3D/resolve/main/FastSAM3D.pth" in out
    assert "Apache-2.0" in out


def test_not_fetched_is_one_line_with_url_and_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VOLSAM_CACHE", str(tmp_path / "empty"))
    with pytest.raises(hub.WeightsNotFetchedError) as e:
        resolve_model("sam_med3d_turbo")
    msg = str(e.value)
    assert "\n" not in msg
    assert "volsam weights fetch sam_med3d_turbo" in msg
    assert "https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth" in msg
    import nibabel as nib
    import numpy as np

    img = tmp_path / "x.nii.gz"  # a real image: the input is checked before the model
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), img)
    assert main(["segment", str(img), "--point", "1,1,1", "--model", "sam_med3d_turbo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("volsam: error: official weights 'sam_med3d_turbo'")


def test_fetch_from_hub_verifies_and_resolves_by_name(server, monkeypatch, mini_bytes, capsys):
    _entry(monkeypatch, name="mini_hf", repo_id="org/mini", filename="mini.pth")
    assert hub.cached_path("mini_hf") is None
    r = hub.fetch("mini_hf", progress=False)
    assert r.path.read_bytes() == mini_bytes["sam_med3d_mini"]
    assert r.sha256_checked_against == "hub" and r.architecture == "sam_med3d_mini"
    assert hub.cached_path("mini_hf") == r.path
    net = resolve_model("mini_hf")
    want = torch.load(io.BytesIO(mini_bytes["sam_med3d_mini"]), weights_only=True)["model_state_dict"]
    got = net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert main(["weights", "path", "mini_hf"]) == 0
    assert capsys.readouterr().out.strip() == str(r.path)
    # A second fetch finds the file and asks the server for metadata only.
    n_get = sum(1 for m, _, _ in server.requests if m == "GET")
    hub.fetch("mini_hf", progress=False)
    assert sum(1 for m, _, _ in server.requests if m == "GET") == n_get


def test_fetch_from_hub_rejects_a_file_that_does_not_match_the_hub_digest(server, monkeypatch):
    _entry(monkeypatch, name="mini_hf", repo_id="org/mini", filename="mini.pth")
    server.etag["/org/mini/resolve/main/mini.pth"] = "0" * 64
    with pytest.raises(ValueError, match="sha256"):
        hub.fetch("mini_hf", progress=False)
    assert hub.cached_path("mini_hf") is None  # removed: never found by name afterwards


def test_plain_https_fetch_resumes_after_a_cut(server, monkeypatch, mini_bytes):
    data = mini_bytes["sam_med3d_mini"]
    _entry(monkeypatch, name="mini_plain", url=server.url + "/plain/mini.pth", sha256=hashlib.sha256(data).hexdigest())
    server.cut_at = len(data) // 3
    with pytest.raises(OSError, match="resume"):
        hub.fetch("mini_plain", progress=False)
    assert hub.cached_path("mini_plain") is None  # no half-written file under the final name
    r = hub.fetch("mini_plain", progress=False)
    assert r.path.read_bytes() == data and r.sha256_checked_against == "volsam"
    gets = [rng for m, p, rng in server.requests if m == "GET" and p == "/plain/mini.pth"]
    assert gets == [None, f"bytes={len(data) // 3}-"]


def test_fetch_reports_a_recorded_digest_mismatch(server, monkeypatch):
    _entry(monkeypatch, name="mini_plain", url=server.url + "/plain/mini.pth", sha256="1" * 64)
    with pytest.raises(ValueError, match="recorded by volsam"):
        hub.fetch("mini_plain", progress=False)


def test_fetch_names_the_architecture_a_wrong_file_fits(server, monkeypatch):
    _entry(monkeypatch, name="mini_wrong", url=server.url + "/plain/other.pth")
    with pytest.raises(CheckpointError, match="fastsam3d_mini"):
        hub.fetch("mini_wrong", progress=False)


def test_unreachable_server_is_an_oserror_naming_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLSAM_CACHE", str(tmp_path))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = srv.server_port
    srv.server_close()  # nothing listens on the port now
    _entry(monkeypatch, name="mini_gone", url=f"http://127.0.0.1:{port}/x.pth")
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        hub.fetch("mini_gone", progress=False)


def test_manual_entry_names_the_page():
    with pytest.raises(ValueError, match=r"drive\.google\.com"):
        hub.fetch("sam_med3d_v1")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VOLSAM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "volsam"
    monkeypatch.setenv("VOLSAM_CACHE", str(tmp_path / "v"))
    assert hub.cache_dir() == tmp_path / "v"


def test_cli_fetch_prints_the_path_and_what_was_verified(server, monkeypatch, capsys):
    _entry(monkeypatch, name="mini_hf", repo_id="org/mini", filename="mini.pth")
    assert main(["weights", "fetch", "mini_hf", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(hub.cached_path("mini_hf"))
    assert "matches the hub's LFS ETag" in err and "loads strictly as sam_med3d_mini" in err
