"""Hub downloads as a user meets them without the network (issue 26, item 5): `esrgan` says at once what it is
fetching and from where, gives up as soon as the endpoint does not answer (one probe, not the Hub client's retries),
names HF_HUB_OFFLINE, and touches no network at all for files already cached or when told to stay offline. The Hub
is played by local sockets on 127.0.0.1 (HF_ENDPOINT): one refused, one that never answers, one that serves files.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_cli import esrgan

from esrgan_cli.model.hub import HubFile
from esrgan_cli.model.registry import load_registry

from conftest import ROOT, tiny_model, to_esrgan_repo_layout

REV = "0123456789abcdef0123456789abcdef01234567"
NO_PROXY = {k: "" for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")}


def hub_env(tmp_path: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    return {**NO_PROXY, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1" if offline else "",
            "HF_HOME": str(tmp_path / "hf"), "ESRGAN_CACHE": str(tmp_path / "cache"), "NO_PROXY": "127.0.0.1"}


@dataclass
class SilentServer:
    """Accepts connections and never says a word: what a dead proxy or a black-holed route looks like."""

    sock: socket.socket
    connections: int = 0
    held: list[socket.socket] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    sock = socket.create_server(("127.0.0.1", 0))
    server = SilentServer(sock)
    threading.Thread(target=server.serve, daemon=True).start()
    yield server
    sock.close()
    for conn in server.held:
        conn.close()


@pytest.fixture
def refused() -> str:
    """An endpoint on a port nothing listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return proc.stderr.strip().splitlines()


ESRGAN_X4 = "databuzzword/esrgan/RRDB_ESRGAN_x4.pth@bc7c483"


def test_upscale_with_a_hub_model_and_no_network_says_what_and_fails_in_one_line(tmp_path: Path,
                                                                                  refused: str) -> None:
    out = tmp_path / "out.png"
    r = esrgan("upscale", "--model", "esrgan-x4", ROOT / "examples" / "cottage.png", "-o", out,
               env=hub_env(tmp_path, refused))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    announce, error = stderr_lines(r)
    # What, from where and how big, before any wait: the registry's figures.
    size = load_registry().models["esrgan-x4"].size
    assert size is not None
    assert announce == f"esrgan: model 'esrgan-x4': downloading {ESRGAN_X4} ({size / 1e6:.1f} MB) from {refused}"
    assert error.startswith(f"esrgan: error: model 'esrgan-x4': the Hub at {refused} did not answer "
                            "(connection refused)")
    assert "HF_HUB_OFFLINE=1" in error and "--model" in error
    assert f"{refused}/databuzzword/esrgan/resolve/bc7c483933e234850fe76a1578935cf8603ff51b/RRDB_ESRGAN_x4.pth" \
        in error
    assert not out.exists()


def test_a_hub_that_never_answers_is_left_after_one_probe_for_every_model(tmp_path: Path,
                                                                          silent: SilentServer) -> None:
    """The probe's timeout ends the wait: the Hub client never opens a connection of its own (it would retry for
    about 26 s), and the second model believes the first one's failed probe instead of waiting again."""
    r = esrgan("models", "download", "esrgan-x4", "esrgan-psnr-x4", env=hub_env(tmp_path, silent.endpoint))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = stderr_lines(r)
    assert [line.split(": ")[1] for line in lines] == ["model 'esrgan-x4'", "error", "model 'esrgan-psnr-x4'",
                                                       "error"], lines
    assert "downloading databuzzword/esrgan/RRDB_PSNR_x4.pth@bc7c483 (66.9 MB)" in lines[2]
    for error in (lines[1], lines[3]):
        assert f"the Hub at {silent.endpoint} did not answer (timed out after 3 s)" in error
        assert "HF_HUB_OFFLINE=1" in error
    assert silent.connections == 1


def test_offline_mode_names_itself_and_touches_no_network(tmp_path: Path, silent: SilentServer) -> None:
    r = esrgan("models", "download", "esrgan-x4", env=hub_env(tmp_path, silent.endpoint, offline=True))
    assert r.returncode == 1
    (error,) = stderr_lines(r)
    assert error == (f"esrgan: error: model 'esrgan-x4' ({ESRGAN_X4}) is not in the Hugging Face cache and "
                     "HF_HUB_OFFLINE is set: unset it to download the file, or pass --model with a local weights file")
    assert silent.connections == 0


def put_in_hub_cache(tmp_path: Path, repo: str, revision: str, filename: str, source: Path) -> Path:
    """Where `hf_hub_download` would have left the file (the Hub cache's layout under HF_HOME)."""
    target = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / revision / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())
    return target


def test_a_file_in_the_hub_cache_is_used_without_probe_or_announcement(tmp_path: Path, silent: SilentServer,
                                                                        tiny_weights: Path) -> None:
    cached = put_in_hub_cache(tmp_path, "o/r", REV, "m.safetensors", tiny_weights)
    r = esrgan("models", "download", f"hf:o/r/m.safetensors@{REV}", env=hub_env(tmp_path, silent.endpoint))
    assert r.returncode == 0, r.stderr
    assert stderr_lines(r) == [f"esrgan: hf:o/r/m.safetensors@{REV}: ready ({cached})"]
    assert silent.connections == 0


def test_models_list_sees_the_hub_cache(tmp_path: Path, silent: SilentServer, tiny_weights: Path) -> None:
    source = load_registry().models["esrgan-x4"].source
    assert isinstance(source, HubFile)

    def cached_column() -> dict[str, str]:
        r = esrgan("models", "list", env=hub_env(tmp_path, silent.endpoint))
        assert r.returncode == 0, r.stderr
        return {line.split()[0]: line.split()[5] for line in r.stdout.splitlines()[1:-1]}

    before = cached_column()
    put_in_hub_cache(tmp_path, source.repo, source.revision, source.filename, tiny_weights)
    cached = {"b": before, "a": cached_column()}
    assert (cached["b"]["esrgan-x4"], cached["a"]["esrgan-x4"]) == ("no", "yes")
    assert cached["a"]["esrgan-psnr-x4"] == "no"
    assert silent.connections == 0


class FakeHub(BaseHTTPRequestHandler):
    """Enough of the Hub's resolve route for `hf_hub_download`: the commit, etag and size headers, then the bytes."""

    files: dict[str, bytes] = {}
    requests: list[tuple[str, str]] = []

    def _answer(self, body: bool) -> None:
        self.requests.append((self.command, self.path))
        data = self.files.get(self.path)
        if self.path == "/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", REV)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_a_reachable_hub_still_downloads_through_the_hub_client(tmp_path: Path) -> None:
    """The probe lets a Hub that answers through to `hf_hub_download` (pinned revision, its cache), and the legacy
    checkpoint is converted once; the second run finds it cached and asks nothing."""
    pth = tmp_path / "m.pth"
    torch.save(to_esrgan_repo_layout(tiny_model().state_dict()), pth)
    FakeHub.files = {f"/o/r/resolve/{REV}/m.pth": pth.read_bytes()}
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        spec = f"hf:o/r/m.pth@{REV}"
        first = esrgan("models", "download", spec, env=hub_env(tmp_path, endpoint))
        assert first.returncode == 0, first.stderr
        announce, ready = stderr_lines(first)
        assert announce == f"esrgan: {spec}: downloading o/r/m.pth@0123456 from {endpoint}"
        assert ready.startswith(f"esrgan: {spec}: ready (") and ready.endswith(".safetensors)")
        assert ("HEAD", "/") in FakeHub.requests  # the probe
        assert ("GET", f"/o/r/resolve/{REV}/m.pth") in FakeHub.requests  # the Hub client's download
        assert any((tmp_path / "hf" / "hub").rglob("m.pth"))
        asked = len(FakeHub.requests)
        second = esrgan("models", "download", spec, env=hub_env(tmp_path, endpoint))
        assert second.returncode == 0 and stderr_lines(second) == [ready]
        assert len(FakeHub.requests) == asked
    finally:
        server.shutdown()
        server.server_close()

