"""Batch planning, the resume journal, the pipelined runner, and the batch command end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import esrgan

from esrgan_cli.batch._jobs import Job, list_jobs
from esrgan_cli.batch._journal import Journal
from esrgan_cli.batch.runner import Stages, Written, run_batch
from esrgan_cli.errors import BatchError, EsrganError
from esrgan_cli.files import sha256_of
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import save_safetensors

from conftest import ROOT, WAIT_S, default_sigint, random_image, tiny_model, wait_until


def save_png(path: Path, h: int = 12, w: int = 10, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((random_image(h, w, seed) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    save_png(root / "top.png", seed=1)
    save_png(root / "a" / "mid.png", seed=2)
    save_png(root / "a" / "b" / "deep.png", seed=3)
    Image.fromarray((random_image(12, 10) * 255).astype(np.uint8)).save(root / "a" / "photo.jpg")
    good = (root / "top.png").read_bytes()
    (root / "a" / "b" / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_collect_mirrors_the_tree_and_ignores_non_images(tree: Path, tmp_path: Path) -> None:
    jobs, ignored = list_jobs([str(tree)], tmp_path / "out", recursive=True)
    assert sorted(j.key for j in jobs) == ["a/b/corrupt.png", "a/b/deep.png", "a/mid.png", "a/photo.jpg", "top.png"]
    assert [(Path(i.path).name, i.reason) for i in ignored] == [("notes.txt", "not an image extension")]
    flat, _ = list_jobs([str(tree)], tmp_path / "out", recursive=False)
    assert [j.key for j in flat] == ["top.png"]
    renamed, _ = list_jobs([str(tree)], tmp_path / "out", recursive=True, fmt="webp", suffix="_x4")
    assert "a/photo_x4.webp" in {j.key for j in renamed}


def test_collisions_are_found_before_any_work(tmp_path: Path) -> None:
    save_png(tmp_path / "in" / "pic.png")
    save_png(tmp_path / "in" / "pic.jpg")
    with pytest.raises(BatchError, match="would both write"):
        list_jobs([str(tmp_path / "in")], tmp_path / "out", fmt="png")
    with pytest.raises(BatchError, match="overwrite the input"):
        list_jobs([str(tmp_path / "in" / "pic.png")], tmp_path / "in")


def test_globs_duplicates_and_outputs_inside_the_input(tmp_path: Path) -> None:
    a = save_png(tmp_path / "a.png")
    save_png(tmp_path / "b.png")
    save_png(tmp_path / "out" / "old_result.png")
    jobs, _ = list_jobs([str(tmp_path / "*.png"), str(a), str(tmp_path)], tmp_path / "out", recursive=True)
    assert sorted(j.key for j in jobs) == ["a.png", "b.png"]
    with pytest.raises(BatchError, match="no files match"):
        list_jobs([str(tmp_path / "*.gif")], tmp_path / "out")


def test_journal_validity(tmp_path: Path) -> None:
    src = save_png(tmp_path / "in.png")
    out = tmp_path / "out"
    out.mkdir()
    job = Job(src, out / "in.png", "in.png")
    job.dst.write_bytes(b"complete output")
    journal = Journal(out)
    journal.record(job, sha256_of(src), "model-1", {"tile": 64})
    with open(journal.path, "a") as f:
        f.write('{"output": "half a line')  # a crash mid-append
    again = Journal(out)
    assert again.is_done(job, "model-1", {"tile": 64})
    assert not again.is_done(job, "model-2", {"tile": 64})
    assert not again.is_done(job, "model-1", {"tile": 128})
    job.dst.write_bytes(b"a different output")
    assert not again.is_done(job, "model-1", {"tile": 64})
    job.dst.write_bytes(b"complete output")
    save_png(src, seed=9)
    assert not again.is_done(job, "model-1", {"tile": 64})


@pytest.mark.parametrize("overlap_io", [True, False])
def test_runner_reports_failures_and_goes_on(overlap_io: bool, tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{i}", tmp_path / f"o{i}", f"o{i}") for i in range(7)]
    written: list[str] = []

    def decode(job: Job) -> int:
        if job.key == "o2":
            raise EsrganError("bad input")
        return int(job.key[1:])

    def compute(job: Job, n: int) -> int:
        if n == 4:
            raise EsrganError("bad compute")
        return n * n

    def encode(job: Job, n: int, sq: int) -> Written:
        if n == 5:
            raise EsrganError("disk full")
        written.append(f"{n}:{sq}")
        return Written(1.0)

    outcomes = run_batch(jobs, Stages(decode, compute, encode), overlap_io=overlap_io)
    assert sorted(o.job.key for o in outcomes) == [j.key for j in jobs]
    assert {o.job.key: o.error for o in outcomes if o.error} == {"o2": "bad input", "o4": "bad compute",
                                                                 "o5": "disk full"}
    assert sorted(written) == ["0:0", "1:1", "3:9", "6:36"]


def test_runner_overlaps_io_with_bounded_queues(tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{i}", tmp_path / f"o{i}", f"o{i}") for i in range(30)]
    decoded, encoded, threads = [0], [0], set()
    lock = threading.Lock()

    def decode(job: Job) -> None:
        threads.add(threading.current_thread().name)
        with lock:
            decoded[0] += 1
            # one being decoded, two queued, one in compute, two queued, one being encoded
            assert decoded[0] - encoded[0] <= 1 + 2 + 1 + 2 + 1

    def compute(job: Job, _: None) -> None:
        time.sleep(0.002)

    def encode(job: Job, _: None, __: None) -> Written:
        threads.add(threading.current_thread().name)
        time.sleep(0.004)
        with lock:
            encoded[0] += 1
        return Written(0.0)

    assert len(run_batch(jobs, Stages(decode, compute, encode), overlap_io=True, depth=2)) == 30
    assert threading.current_thread().name not in threads and len(threads) == 2


@pytest.mark.parametrize("stage", ["decode", "compute", "encode"])
def test_unexpected_errors_in_any_stage_reach_the_caller(stage: str, tmp_path: Path) -> None:
    jobs = [Job(tmp_path / f"{i}", tmp_path / f"o{i}", f"o{i}") for i in range(5)]

    def boom(*args: object) -> None:
        if args[0] is jobs[2]:
            raise RuntimeError(f"bug in {stage}")

    fns = {"decode": lambda j: None, "compute": lambda j, d: None, "encode": lambda j, d, r: Written(0.0)}
    fns[stage] = boom
    with pytest.raises(RuntimeError, match=f"bug in {stage}"):
        run_batch(jobs, Stages(fns["decode"], fns["compute"], fns["encode"]), overlap_io=True)


def test_batch_command_on_a_tree(tree: Path, tiny_weights: Path, tmp_path: Path) -> None:
    """Issue 3, must show 2: nested images mirrored, the corrupt file reported, exit 1; a rerun redoes nothing."""
    out, report = tmp_path / "out", tmp_path / "report.json"
    proc = esrgan("upscale", tree, "-o", out, "-r", "--model", tiny_weights, "--report", report)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "corrupt.png" in proc.stderr
    data = json.loads(report.read_text())
    assert [f["input"] for f in data["failed"]] == [str(tree / "a" / "b" / "corrupt.png")]
    assert len(data["done"]) == 4
    for rel in ("top.png", "a/mid.png", "a/b/deep.png", "a/photo.jpg"):
        assert Image.open(out / rel).size == (40, 48), rel
    assert not (out / "a" / "b" / "corrupt.png").exists() and not list(out.rglob("*.tmp"))
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if not p.name.startswith(".esrgan")}
    time.sleep(0.05)
    again = esrgan("upscale", tree, "-o", out, "-r", "--model", tiny_weights, "--report", report)
    assert again.returncode == 1
    assert json.loads(report.read_text())["skipped"] and not json.loads(report.read_text())["done"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    changed = esrgan("upscale", tree, "-o", out, "-r", "--model", tiny_weights, "--overlap", "3", "-q")
    assert changed.returncode == 1
    assert all(p.stat().st_mtime_ns != t for p, t in mtimes.items())


def test_sigint_during_a_batch_exits_130_and_the_rerun_resumes(tmp_path: Path) -> None:
    model = tiny_model(RRDBConfig(num_feat=16, num_block=2, num_grow=8))
    weights = tmp_path / "m.safetensors"
    save_safetensors(model.state_dict(), model.config, weights)
    for i in range(16):
        save_png(tmp_path / "in" / f"{i:02}.png", 384, 384, seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "esrgan_cli", "upscale", str(tmp_path / "in"), "-o", str(out), "--model",
           str(weights)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=default_sigint)
    # Outputs appear by rename when complete, so two of them mean the batch is well under way.
    wait_until(lambda: out.is_dir() and len(list(out.glob("*.png"))) >= 2, proc, "two finished outputs")
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    finished = sorted(out.glob("*.png"))
    assert 2 <= len(finished) < 16
    for p in finished:
        assert Image.open(p).size == (1536, 1536)  # every output present is complete
    before = {p: p.stat().st_mtime_ns for p in finished}
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=WAIT_S)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("*.png"))) == 16
    assert {p: p.stat().st_mtime_ns for p in finished} == before


def test_one_file_into_an_existing_folder_or_a_name_without_extension(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_png(tmp_path / "one.png")
    (tmp_path / "dest.png").mkdir()  # a folder, whatever its name says
    for out in (tmp_path / "dest.png", tmp_path / "fresh"):
        proc = esrgan("upscale", src, "-o", out, "--model", tiny_weights, "-q")
        assert proc.returncode == 0, proc.stderr
        assert Image.open(out / "one.png").size == (40, 48)


def test_single_file_mode_is_kept_for_one_file(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_png(tmp_path / "one.png")
    proc = esrgan("upscale", src, "-o", tmp_path / "res.jpg", "--model", tiny_weights, "--tta", "-q")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "res.jpg").size == (40, 48)
    assert not (tmp_path / "res.jpg" / ".esrgan-journal.jsonl").exists()
    assert os.path.isfile(tmp_path / "res.jpg")


def test_links_extensions_and_ignored_files_as_a_user_meets_them(tiny_weights: Path, tmp_path: Path) -> None:
    """Issue 26, item 7, in real processes: a symlink loop and a broken symlink in a folder are failures with their
    reason (they used to vanish from every count); `.pgm` is read in a batch as it is alone (one list of
    extensions, Pillow's); the files not read are named in the report and, with -v, on screen."""
    src = tmp_path / "in"
    save_png(src / "a.png")
    Image.fromarray((random_image(8, 8, 1)[..., 0] * 255).astype(np.uint8)).save(src / "gray.pgm")
    save_png(src / "gray.png")  # a PNG beside the PGM, as a texture folder holds tex.dds beside tex.png
    (src / "notes.txt").write_text("not an image")
    (src / "loop.png").symlink_to("loop.png")
    (src / "gone.png").symlink_to("deleted.png")  # relative, as `ln -s` makes them: said as the link says it
    report = tmp_path / "report.json"
    proc = esrgan("upscale", src, "-o", tmp_path / "out", "--model", tiny_weights, "--report", report)
    assert proc.returncode == 1, proc.stderr
    assert "done 3, skipped 0, failed 2" in proc.stderr
    failed = sorted(line for line in proc.stderr.splitlines() if line.startswith("esrgan: failed:"))
    assert len(failed) == 2
    assert f"{src / 'gone.png'}: a broken symlink (its target deleted.png does not exist)" in failed[0]
    assert f"{src / 'loop.png'}: a symlink loop" in failed[1]
    assert "1 file in the input folders not read (-v names them)" in proc.stderr and "notes.txt" not in proc.stderr
    data = json.loads(report.read_text())
    assert sorted(Path(d["input"]).name for d in data["done"]) == ["a.png", "gray.pgm", "gray.png"]
    # esrgan writes no PGM: PNG keeps it all, named after the input's whole name so that it meets no gray.png
    assert Image.open(tmp_path / "out" / "gray.pgm.png").size == (32, 32)
    assert Image.open(tmp_path / "out" / "gray.png").size == tuple(4 * n for n in Image.open(src / "gray.png").size)
    assert sorted(Path(d["input"]).name for d in data["failed"]) == ["gone.png", "loop.png"]
    assert data["ignored"] == [{"input": str(src / "notes.txt"), "reason": "not an image extension"}]

    verbose = esrgan("upscale", src, "-o", tmp_path / "out", "--model", tiny_weights, "-v")
    assert f"esrgan:   not read: {src / 'notes.txt'} (not an image extension)" in verbose.stderr.splitlines()
    assert f"esrgan: 3 already done (journal in {tmp_path / 'out'}), 1 file in the input folders not read:" in (
        verbose.stderr.splitlines())

    alone = esrgan("upscale", src / "loop.png", "-o", tmp_path / "loop_x4.png", "--model", tiny_weights)
    assert alone.returncode == 1 and alone.stderr.strip().splitlines() == [
        f"esrgan: error: {src / 'loop.png'}: a symlink loop (the link leads back to itself)"]


def test_summary_lines_say_each_thing_once_and_only_when_it_informs(tiny_weights: Path, tmp_path: Path) -> None:
    """No "0 non-image files ignored", no "0.004 input Mpx/s" for a few icons; `-o out` without an extension for
    one file says where the output goes; an animation of whole frames is not "5 tiles"."""
    src = save_png(tmp_path / "icon.png")
    first = esrgan("upscale", src, "-o", tmp_path / "out", "--model", tiny_weights)
    lines = first.stderr.strip().splitlines()
    assert first.returncode == 0 and (tmp_path / "out" / "icon.png").exists(), first.stderr
    assert lines[0] == (f"esrgan: note: -o {tmp_path / 'out'} has no extension, so it names a folder: the output "
                        f"goes into {tmp_path / 'out'}/ (give -o {tmp_path / 'out'}.png to write one file)")
    summary = lines[-1]
    assert summary.startswith("esrgan: done 1, skipped 0, failed 0 in ") and f"(into {tmp_path / 'out'})" in summary
    assert "Mpx/s" not in summary and "ignored" not in first.stderr and "not read" not in first.stderr
    rerun = esrgan("upscale", src, "-o", tmp_path / "out", "--model", tiny_weights, "-q")
    assert rerun.returncode == 0 and rerun.stderr == ""

    frames = [Image.fromarray((random_image(8, 8, i) * 255).astype(np.uint8)) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    anim = esrgan("upscale", tmp_path / "anim.gif", "-o", tmp_path / "anim_x4.gif", "--model", tiny_weights,
                  "--tile", "0")
    wrote = anim.stderr.strip().splitlines()[-1]
    assert anim.returncode == 0 and "5 frames of 32×32" in wrote and "whole frames" in wrote, anim.stderr
    assert "tiles" not in wrote
