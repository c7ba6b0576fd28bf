"""Issue 15 without a Ray cluster: the one-line errors of `--ray` and `--workers`, and the driver on local worker
processes (the backend that runs one replica per GPU; here on two CPU "devices"), including a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_batch import save_png
from test_cli import assert_one_line_error, esrgan

from esrgan_cli.batch._jobs import list_jobs
from esrgan_cli.batch._journal import Journal, pixel_options
from esrgan_cli.batch.cluster.driver import Journaling, open_driver
from esrgan_cli.batch.cluster.protocol import ClusterOptions
from esrgan_cli.batch.cluster.worker import WorkerConfig
from esrgan_cli.batch.plan import BatchOptions, plan_batch
from esrgan_cli.batch.runner import Outcome
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import load_weights, save_safetensors
from esrgan_cli.upscale.pipeline import UpscaleOptions

from conftest import ROOT, WAIT_S, tiny_model

NO_RAY = "import sys; sys.modules['ray'] = None; from esrgan_cli.cli import main; sys.argv[0] = 'esrgan'; main()"


def test_ray_without_the_extra_is_one_line_naming_the_install(tiny_weights: Path, tmp_path: Path) -> None:
    save_png(tmp_path / "in" / "a.png")
    proc = subprocess.run([sys.executable, "-c", NO_RAY, "upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                           "--model", str(tiny_weights), "--ray", "auto"],
                          capture_output=True, text=True, cwd=ROOT, timeout=WAIT_S)
    assert_one_line_error(proc, 1, 'pip install ".[ray]" in the esrgan checkout')


def test_ray_and_workers_are_for_batches(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_png(tmp_path / "a.png")
    proc = esrgan("upscale", src, "-o", tmp_path / "b.png", "--model", tiny_weights, "--ray", "auto")
    assert proc.returncode == 2 and "for batches" in proc.stderr and "Traceback" not in proc.stderr


def test_a_cluster_address_that_does_not_answer_is_one_line(tiny_weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    save_png(tmp_path / "in" / "a.png")
    for address, words in ((f"127.0.0.1:{port}", "nothing answers"), ("nonsense", "expected auto, local")):
        proc = esrgan("upscale", tmp_path / "in", "-o", tmp_path / "o", "--model", tiny_weights, "--ray", address)
        assert_one_line_error(proc, 1, "esrgan: error:", words)


def test_workers_without_gpus_runs_one_process_with_a_note(tiny_weights: Path, tmp_path: Path) -> None:
    save_png(tmp_path / "in" / "a.png")
    proc = esrgan("upscale", tmp_path / "in", "-o", tmp_path / "o", "--model", tiny_weights, "--workers", "3",
                  "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "note: --workers 3 without --ray spreads over GPUs" in proc.stderr and "are none" in proc.stderr
    assert "done 1, skipped 0, failed 0" in proc.stderr


def run_on_processes(src: Path, out: Path, weights: Path, kill_one: bool = False) -> tuple[list[Outcome], list[str]]:
    """The driver on two local worker processes (CPU), as `--workers 2` runs on a machine with two GPUs."""
    options = UpscaleOptions(tile=0)
    config = WorkerConfig(options=options, quality=95, device="cpu")
    driver = open_driver(ClusterOptions(workers=2, devices=("cpu", "cpu")), load_weights(weights), config)
    outcomes: list[Outcome] = []
    notes: list[str] = []
    try:
        info = driver.first_ready()
        out.mkdir(exist_ok=True)
        jobs, ignored = list_jobs([str(src)], out)
        pixels = pixel_options(vars(options), 95, info.dtype)
        journal = Journal(out)
        plan = plan_batch(jobs, ignored, BatchOptions(), journal, "model-sha", pixels)
        driver.on_note = notes.append
        if kill_one:
            pool = driver.pool
            slot = next(iter(driver.slots))

            def kill_when_busy() -> None:  # SIGKILL the first replica once it holds files, after a first output
                while not (driver.slots.get(slot) and driver.slots[slot].inflight and outcomes):
                    threading.Event().wait(0.01)
                os.kill(pool.pid(slot), signal.SIGKILL)

            threading.Thread(target=kill_when_busy, daemon=True).start()
        driver.run(plan.todo, Journaling(journal, "model-sha", pixels), outcomes.append)
    finally:
        driver.pool.close()
    return outcomes, notes


def test_local_processes_match_the_local_batch_and_survive_a_killed_one(tmp_path: Path) -> None:
    model = tiny_model(RRDBConfig(num_feat=16, num_block=2, num_grow=8))
    weights = tmp_path / "m.safetensors"
    save_safetensors(model.state_dict(), model.config, weights)
    for i in range(10):
        save_png(tmp_path / "in" / f"{i}.png", 64, 64, seed=i)
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    reference = esrgan("upscale", tmp_path / "in", "-o", tmp_path / "ref", "--model", weights, "--tile", "0", "-q")
    assert reference.returncode == 1, reference.stderr

    outcomes, notes = run_on_processes(tmp_path / "in", tmp_path / "out", weights, kill_one=True)
    assert sorted(o.job.key for o in outcomes) == sorted([f"{i}.png" for i in range(10)] + ["bad.png"])
    assert [o.job.key for o in outcomes if o.error] == ["bad.png"]
    assert any("a worker died" in n for n in notes), notes
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*.tmp"))
    for i in range(10):
        got, want = (np.asarray(Image.open(tmp_path / d / f"{i}.png")) for d in ("out", "ref"))
        assert np.array_equal(got, want), i
    lines = (tmp_path / "out" / ".esrgan-journal.jsonl").read_text().splitlines()
    assert len(lines) == 10 == len({line.split('"output": ')[1].split(",")[0] for line in lines})
