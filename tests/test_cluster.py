"""Issue 15, must show 1 and 2: batches on a real Ray cluster (started here with `ray start --head` on 127.0.0.1,
two CPUs, a small object store), tiny models on the CPU. Skipped without the `ray` extra; `.ci/run` installs it.

Each test waits for something it can observe (outputs by rename, a worker's process), never for a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_batch import save_png
from test_cli import assert_one_line_error, esrgan

from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import save_safetensors

from conftest import ROOT, WAIT_S, default_sigint, tiny_model, wait_until

ray = pytest.importorskip("ray")

# The test cluster has no token authentication (it listens on this machine only); drivers are told the same.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(condition: object, limit_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def ray_head(env: dict[str, str], client: int | None = None) -> Iterator[int]:
    """`ray start --head` on 127.0.0.1 (two CPUs, a small object store, Ray's client on port `client`) with `env`;
    yields its port. Its whole process group is stopped afterwards."""
    temp = tempfile.mkdtemp(prefix="esr-ray-")  # short: Ray's socket paths must stay under 108 characters
    port = _free_port()
    start = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
         f"--ray-client-server-port={client or _free_port()}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=200000000",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HOME": temp, **env},
        start_new_session=True,  # its own process group: the cluster's processes, and only they, are stopped
    )
    try:
        out, _ = start.communicate(timeout=WAIT_S)
        assert start.returncode == 0, out
        yield port
    finally:
        for sig, limit in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 60.0)):  # Ray may ignore SIGTERM for long
            if _group_gone(start.pid):
                break
            os.killpg(start.pid, sig)
            _wait_for(lambda: _group_gone(start.pid), limit)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def addresses() -> Iterator[tuple[str, str]]:
    """A cluster as the README shows it (HOST:PORT, and ray://HOST:PORT for Ray's client), without tokens."""
    client = _free_port()
    with ray_head(RAY_ENV, client) as port:
        yield f"127.0.0.1:{port}", f"ray://127.0.0.1:{client}"


def esrgan_at_home(home: Path, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`esrgan ARGS` as a user with the home folder `home` who has set none of Ray's token variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    return subprocess.run([sys.executable, "-m", "esrgan_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=WAIT_S, env={**clean, "HF_HUB_OFFLINE": "1", "HOME": str(home), **env})


@pytest.fixture
def cluster(addresses: tuple[str, str]) -> str:
    return addresses[0]


def replicas() -> list[int]:
    """Processes of Ray actors running esrgan replicas (Ray titles them ray::Replica...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::Replica"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def journal(out: Path) -> dict[str, dict]:
    lines = (out / ".esrgan-journal.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    keyed = {e["output"]: {k: v for k, v in e.items() if k != "time"} for e in entries}
    assert len(keyed) == len(entries), "an output journaled twice"
    return keyed


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".esrgan")}


def pixels(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for i in range(6):
        save_png(root / f"{i}.png", 20 + i, 18, seed=i)
    save_png(root / "sub" / "deep.png", seed=7)
    Image.fromarray((np.random.default_rng(1).random((16, 14, 3)) * 255).astype(np.uint8)).save(root / "photo.jpg")
    good = (root / "0.png").read_bytes()
    (root / "sub" / "corrupt.png").write_bytes(good[: len(good) // 2])
    return root


def test_a_cluster_run_equals_a_local_run_and_either_resumes_the_other(
        addresses: tuple[str, str], inputs: Path, tiny_weights: Path, tmp_path: Path) -> None:
    """Must show 1 (outputs and journal equal a local run's, pixel for pixel; a rerun does nothing; a corrupt input
    is reported and the batch exits 1) and 2 (`--ray 127.0.0.1:PORT` joins a `ray start --head` cluster)."""
    cluster, client = addresses
    here, there = tmp_path / "here", tmp_path / "there"
    common = ("upscale", inputs, "-r", "--model", tiny_weights)
    local = esrgan(*common, "-o", here, "--report", tmp_path / "here.json", env=RAY_ENV)
    remote = esrgan(*common, "-o", there, "--ray", cluster, "--workers", "2", "--report", tmp_path / "there.json",
                    env=RAY_ENV)
    for proc in (local, remote):
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "failed: " in proc.stderr and "corrupt.png" in proc.stderr
        assert "done 8, skipped 0, failed 1" in proc.stderr
    assert outputs(here).keys() == outputs(there).keys() == {"0.png", "1.png", "2.png", "3.png", "4.png", "5.png",
                                                             "photo.jpg", "sub/deep.png"}
    for name, data in outputs(here).items():
        assert np.array_equal(pixels(data), pixels(outputs(there)[name])), name
    assert journal(here) == journal(there)
    reports = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("here", "there")]
    for key in ("done", "failed", "skipped"):
        listed = [sorted(json.dumps(item, sort_keys=True) for item in r[key]) for r in reports]
        assert [line.replace(str(here), str(there)) for line in listed[0]] == listed[1], key
    assert reports[0]["model_sha256"] == reports[1]["model_sha256"]
    assert not [p for p in there.rglob("*.tmp")]

    mtimes = {p: p.stat().st_mtime_ns for p in there.rglob("*") if p.is_file() and p.suffix != ".lock"}
    again = esrgan(*common, "-o", there, "--ray", cluster, env=RAY_ENV)
    assert again.returncode == 1 and "done 0, skipped 8, failed 1" in again.stderr, again.stderr
    switched = esrgan(*common, "-o", there, "-q", env=RAY_ENV)  # the local batch reads the cluster's journal
    assert switched.returncode == 1 and "done 0, skipped 8, failed 1" in switched.stderr, switched.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    (here / "3.png").unlink()  # and the cluster (here through Ray's client) finishes what a local run left
    back = esrgan(*common, "-o", here, "--ray", client, env=RAY_ENV)
    assert "done 1, skipped 7, failed 1" in back.stderr, back.stderr


@pytest.fixture
def heavy(tmp_path: Path) -> tuple[Path, Path]:
    """Enough work that a batch is surely under way when a test interrupts it: 16 files of a few seconds each."""
    model = tiny_model(RRDBConfig(num_feat=16, num_block=2, num_grow=8))
    weights = tmp_path / "m.safetensors"
    save_safetensors(model.state_dict(), model.config, weights)
    for i in range(16):
        save_png(tmp_path / "in" / f"{i:02}.png", 160, 160, seed=i)
    return tmp_path / "in", weights


def start_batch(cluster: str, src: Path, weights: Path, out: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "esrgan_cli", "upscale", str(src), "-o", str(out), "--model", str(weights),
           "--ray", cluster, "--workers", "2"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **RAY_ENV}, preexec_fn=default_sigint)


def check_complete(out: Path, expect: int | None = None) -> dict[str, dict]:
    """Every output complete and journaled at most once with its size; no temp file anywhere."""
    assert not [p for p in out.rglob("*.tmp")], "a temp file was left"
    entries = journal(out)
    finished = sorted(out.glob("*.png"))
    if expect is not None:
        assert len(finished) == expect and set(entries) == {p.name for p in finished}
    for p in finished:
        with Image.open(p) as img:
            img.load()
            assert img.size == (640, 640), p
    for key, entry in entries.items():
        assert (out / key).stat().st_size == entry["output_size"], key
    return entries


def test_a_replica_killed_mid_batch_costs_nothing(cluster: str, heavy: tuple[Path, Path], tmp_path: Path) -> None:
    """Must show 1: SIGKILL a replica's process mid-batch; every output is still written once, complete, and
    journaled once, with no temp file left."""
    src, weights = heavy
    out = tmp_path / "out"
    before = set(replicas())
    proc = start_batch(cluster, src, weights, out)
    wait_until(lambda: out.is_dir() and len(list(out.glob("*.png"))) >= 2 and bool(set(replicas()) - before),
               proc, "two outputs while replicas run")
    victim = sorted(set(replicas()) - before)[0]
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, stderr
    # Issue 26, item 11: Ray's coloured "(raylet) A worker died..." paragraph reached stdout, which carries only
    # esrgan's output (none for a batch); without --debug it is not on stderr either.
    assert stdout == ""
    assert "\x1b[" not in stderr and "(raylet)" not in stderr, stderr
    assert "Traceback" not in stderr and "done 16, skipped 0, failed 0" in stderr, stderr
    assert f"note: a worker died on {socket.gethostname()} (pid {victim})" in stderr, stderr
    assert not Path(f"/proc/{victim}").exists()
    check_complete(out, 16)
    local = esrgan("upscale", src / "05.png", "-o", tmp_path / "one.png", "--model", weights, "-q")
    assert local.returncode == 0, local.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(Image.open(out / "05.png")))


def test_ctrl_c_on_the_driver_exits_130_and_the_rerun_finishes(cluster: str, heavy: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    src, weights = heavy
    out = tmp_path / "out"
    before = set(replicas())
    proc = start_batch(cluster, src, weights, out)
    # The journal, not the folder: an output is renamed into place a moment before the driver journals it.
    log = out / ".esrgan-journal.jsonl"
    wait_until(lambda: log.is_file() and log.read_bytes().count(b"\n") >= 2, proc, "two journaled outputs")
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert _wait_for(lambda: not set(replicas()) - before), "the cluster work did not stop"
    done = check_complete(out)
    assert 2 <= len(done) < 16
    kept = {key: (out / key).stat().st_mtime_ns for key in done}
    rerun = esrgan("upscale", src, "-o", out, "--model", weights, "--ray", cluster, env=RAY_ENV)
    assert rerun.returncode == 0, rerun.stderr
    assert f"done {16 - len(done)}, skipped {len(done)}, failed 0" in rerun.stderr, rerun.stderr
    check_complete(out, 16)
    assert {key: (out / key).stat().st_mtime_ns for key in done} == kept


def test_ray_local_starts_and_stops_a_cluster_of_its_own_and_leaves_no_token(
        inputs: Path, tiny_weights: Path, tmp_path: Path) -> None:
    """Issue 26, item 2: Ray's local cluster wrote its token to ~/.ray/auth_token, which later drivers then used
    against clusters without tokens (see the next test)."""
    before = set(replicas())
    (inputs / "sub" / "corrupt.png").unlink()
    home = tmp_path / "home"
    home.mkdir()
    proc = esrgan_at_home(home, "upscale", inputs, "-r", "-o", tmp_path / "out", "--model", tiny_weights,
                          "--ray", "local", "--workers", "1", RAY_TMPDIR=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    assert "done 8, skipped 0, failed 0" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert [p.relative_to(home).as_posix() for p in home.rglob("*")] == []
    assert _wait_for(lambda: not set(replicas()) - before)


def test_a_token_in_home_does_not_break_joining_a_cluster_without_tokens(
        cluster: str, tiny_weights: Path, tmp_path: Path) -> None:
    """Issue 26, item 2: with the token an earlier `--ray local` left, joining a `ray start --head` cluster started
    without tokens failed with "replicas keep dying while they load the model": the driver expected tokens that
    the cluster's processes do not send."""
    save_png(tmp_path / "in" / "a.png")
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)
    proc = esrgan_at_home(home, "upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_weights,
                          "--ray", cluster, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "done 1, skipped 0, failed 0" in proc.stderr, proc.stderr


def test_a_cluster_with_tokens_names_a_missing_or_refused_token_in_one_line(
        tiny_weights: Path, tmp_path: Path) -> None:
    """Issue 26, item 2: a cluster started with token authentication, joined without its token, with another
    token (a file in the home folder), and with its token; the last with --debug, which shows Ray's own messages
    on stderr (and still nothing on stdout)."""
    save_png(tmp_path / "in" / "a.png")
    token = "feedc0de" * 8
    home = tmp_path / "home"
    home.mkdir()
    common = ("upscale", tmp_path / "in", "--model", tiny_weights, "--workers", "1")
    with ray_head({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HF_HUB_OFFLINE": "1"}) as port:
        address = f"127.0.0.1:{port}"
        none = esrgan_at_home(home, *common, "-o", tmp_path / "o1", "--ray", address)
        assert_one_line_error(none, 1, f"the Ray cluster at {address} needs a token: set RAY_AUTH_TOKEN")
        assert none.stdout == ""
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)
        wrong = esrgan_at_home(home, *common, "-o", tmp_path / "o2", "--ray", address)
        assert_one_line_error(wrong, 1, f"the Ray cluster at {address} refused our token "
                                        f"(from {home / '.ray' / 'auth_token'}): set RAY_AUTH_TOKEN")
        right = esrgan_at_home(home, "--debug", *common, "-o", tmp_path / "o3", "--ray", address,
                               RAY_AUTH_TOKEN=token)
        assert right.returncode == 0, right.stderr
        assert "done 1, skipped 0, failed 0" in right.stderr and "Connected to Ray cluster" in right.stderr
        assert right.stdout == ""
    assert not list((tmp_path / "o1").glob("*.png")) and not list((tmp_path / "o2").glob("*.png"))
