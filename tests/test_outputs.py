"""What esrgan creates on disk: file modes that honour the umask, a full disk, and two batches in one folder."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import esrgan

from conftest import random_image


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def save_png(path: Path, h: int = 10, w: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((random_image(h, w, seed) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640)])
def test_every_created_file_honours_the_umask(mask: int, expected: int, tiny_weights: Path, tmp_path: Path) -> None:
    a, b = save_png(tmp_path / "in" / "a.png"), save_png(tmp_path / "in" / "b.png", seed=1)
    old = os.umask(mask)
    try:
        single = esrgan("upscale", a, "-o", tmp_path / "single.png", "--model", tiny_weights, "-q")
        batch = esrgan("upscale", a, b, "-o", tmp_path / "out", "--model", tiny_weights, "-q",
                       "--report", tmp_path / "report.json")
        converted = esrgan("convert", tiny_weights, "-o", tmp_path / "converted.safetensors")
    finally:
        os.umask(old)
    for proc in (single, batch, converted):
        assert proc.returncode == 0, proc.stderr
    created = [tmp_path / "single.png", tmp_path / "out" / "a.png", tmp_path / "out" / "b.png",
               tmp_path / "report.json", tmp_path / "out" / ".esrgan-journal.jsonl",
               tmp_path / "converted.safetensors"]
    assert {p.name: oct(mode_of(p)) for p in created} == {p.name: oct(expected) for p in created}


def test_atomic_write_gives_the_umask_mode_in_process(umask_022: None, tmp_path: Path) -> None:
    from esrgan_cli.files import atomic_write

    with atomic_write(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"data")
    assert mode_of(tmp_path / "x.bin") == 0o644


def enospc_after(n_ok: int, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Image.save writes normally `n_ok` times, then writes part of a file and fails as a full disk does."""
    original = Image.Image.save
    calls: list[Path] = []

    def save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls.append(Path(str(fp)))
        if len(calls) > n_ok:
            Path(str(fp)).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", save)
    return calls


def test_a_full_disk_is_one_line_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], tiny_weights: Path,
                                                    tmp_path: Path) -> None:
    from test_decode import run_cli

    src = save_png(tmp_path / "in.png")
    enospc_after(0, monkeypatch)
    code, err = run_cli(monkeypatch, capsys, "upscale", src, "-o", tmp_path / "out.png", "--model", tiny_weights)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"esrgan: error: {tmp_path / 'out.png'}: ") and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "tiny.safetensors"]


def test_a_full_disk_stops_the_batch_and_the_rerun_resumes(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], tiny_weights: Path,
                                                           tmp_path: Path) -> None:
    from test_decode import run_cli

    for i in range(5):
        save_png(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "out"
    enospc_after(2, monkeypatch)
    code, err = run_cli(monkeypatch, capsys, "upscale", tmp_path / "in", "-o", out, "--model", tiny_weights)
    assert code == 1 and "Traceback" not in err
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 1 and "No space left on device" in failed[0], err
    assert "stopped: 2 files not started" in err and "run the same command again" in err
    assert sorted(p.name for p in out.iterdir()) == [".esrgan-journal.jsonl", ".esrgan.lock", "0.png", "1.png"]
    assert len((out / ".esrgan-journal.jsonl").read_text().splitlines()) == 2
    monkeypatch.undo()
    code, err = run_cli(monkeypatch, capsys, "upscale", tmp_path / "in", "-o", out, "--model", tiny_weights)
    assert code == 0 and "2 already done" in err and "done 3, skipped 2, failed 0" in err, err
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i}.png" for i in range(5)]
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]


def test_a_journal_append_that_fills_the_disk_is_cut_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from esrgan_cli.batch._jobs import Job
    from esrgan_cli.batch._journal import Journal
    from esrgan_cli.errors import DiskFullError

    src = save_png(tmp_path / "in.png")
    out = tmp_path / "out"
    out.mkdir()
    journal = Journal(out)
    first, second = Job(src, out / "a.png", "a.png"), Job(src, out / "b.png", "b.png")
    for job in (first, second):
        job.dst.write_bytes(b"output")
    journal.record(first, "sha", "model", {})
    before = journal.path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match="No space left on device"):
        journal.record(second, "sha", "model", {})
    assert journal.path.read_bytes() == before


def test_a_second_batch_into_a_busy_folder_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], tiny_weights: Path,
                                                      tmp_path: Path) -> None:
    from test_decode import run_cli

    from esrgan_cli.files import folder_lock

    save_png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):  # as a running batch holds it
        code, err = run_cli(monkeypatch, capsys, "upscale", tmp_path / "in", "-o", out, "--model", tiny_weights)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "another esrgan batch is writing into this folder" in err
    assert not list(out.glob("*.png"))
    code, err = run_cli(monkeypatch, capsys, "upscale", tmp_path / "in", "-o", out, "--model", tiny_weights, "-q")
    assert code == 0 and (out / "a.png").is_file()


def lock_is_held(path: Path) -> bool:
    import fcntl

    if not path.exists():
        return False
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def test_two_concurrent_batches_neither_corrupt_the_journal_nor_write_twice(tiny_weights: Path,
                                                                            tmp_path: Path) -> None:
    import subprocess
    import time

    from test_cli import ROOT

    n = 12
    for i in range(n):
        save_png(tmp_path / "in" / f"{i:02}.png", h=40, w=40, seed=i)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "esrgan_cli", "upscale", str(tmp_path / "in"), "-o", str(out),
            "--model", str(tiny_weights), "--tta", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock_is_held(out / ".esrgan.lock") and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition, not waiting a fixed time
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    first_err = first.communicate(timeout=300)[1]
    assert first.returncode == 0, first_err
    if second.returncode == 1:  # the usual case: the first still held the folder
        assert second.stderr.count("\n") == 1 and "another esrgan batch is writing into this folder" in second.stderr
    else:  # the first finished before the second started: everything is skipped, nothing rewritten
        assert second.returncode == 0, second.stderr
    lines = (out / ".esrgan-journal.jsonl").read_text().splitlines()
    assert len(lines) == n and len({json.loads(line)["output"] for line in lines}) == n
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:02}.png" for i in range(n)]
