"""The command line as a user meets it: exit codes, one-line errors, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import save_safetensors

from conftest import ROOT, WAIT_S, random_image, start_esrgan_watching, tiny_model, wait_until


def esrgan(*args: str | Path, env: dict[str, str] | None = None,
           timeout: float = WAIT_S) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "esrgan_cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 or (code == 2 and "Error:" in proc.stderr), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("out"))


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray((random_image(16, 12) * 255).astype(np.uint8)).save(path)
    return path


def test_help_and_version_are_fast_and_do_not_import_torch() -> None:
    code = (
        "import sys, esrgan_cli.cli as c; sys.argv=['esrgan','upscale','--help'];\n"
        "try: c.main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Examples:" in proc.stdout and "--tile" in proc.stdout
    version = esrgan("--version")
    assert version.returncode == 0 and version.stdout.startswith("esrgan, version ")


def test_upscale_writes_a_complete_image(png: Path, tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    src = tmp_path / "wide.png"
    Image.fromarray((random_image(40, 36) * 255).astype(np.uint8)).save(src)
    proc = esrgan("upscale", src, "-o", out, "--model", tiny_weights, "--tile", "16", "--overlap", "4")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (144, 160)
    assert "wrote" in proc.stderr and "tiles" in proc.stderr
    quiet = esrgan("upscale", png, "-o", tmp_path / "out2.png", "--model", tiny_weights, "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_fp16_request_on_cpu_runs_fp32_with_a_note(png: Path, tiny_weights: Path, tmp_path: Path) -> None:
    proc = esrgan("upscale", png, "-o", tmp_path / "out.png", "--model", tiny_weights, "--precision", "fp16",
                  "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "fp16 is not used on the CPU" in proc.stderr and "float32" in proc.stderr


def _bomb(tmp_path: Path) -> Path:
    path = tmp_path / "bomb.png"
    Image.new("1", (10000, 9000)).save(path)  # 90 Mpx: over Pillow's limit, a few KB on disk
    return path


def _truncated(tmp_path: Path) -> Path:
    full = tmp_path / "full.png"
    Image.fromarray((random_image(64, 64) * 255).astype(np.uint8)).save(full)
    path = tmp_path / "trunc.png"
    path.write_bytes(full.read_bytes()[:600])
    return path


BAD_INPUTS = {
    "missing": (lambda d, png: ["upscale", d / "nope.png", "-o", d / "out.png"], 1, "no such file"),
    "folder into a file name": (lambda d, png: ["upscale", d, "-o", d / "out.png"], 2, "names an output folder"),
    "not a regular file": (lambda d, png: ["upscale", _fifo(d), "-o", d / "out.png"], 1, "not a file"),
    "text file": (lambda d, png: ["upscale", _write(d / "notes.txt", b"hi"), "-o", d / "out.png"], 1,
                  "not an image"),
    "empty file": (lambda d, png: ["upscale", _write(d / "e.png", b""), "-o", d / "out.png"], 1, "empty file"),
    "truncated": (lambda d, png: ["upscale", _truncated(d), "-o", d / "out.png"], 1, "cannot decode"),
    "bomb": (lambda d, png: ["upscale", _bomb(d), "-o", d / "out.png"], 1, "limit"),
    "output too large": (lambda d, png: ["upscale", png, "-o", d / "out.png", "--max-output-pixels", "1000"], 1,
                         "--max-output-pixels"),
    "output is input": (lambda d, png: ["upscale", png, "-o", png], 1, "overwrite the input"),
    "output via other path": (lambda d, png: ["upscale", png, "-o", d / "." / png.name], 1, "overwrite the input"),
    "unwritable output": (lambda d, png: ["upscale", png, "-o", _write(d / "afile", b"x") / "out.png"], 1,
                          "does not exist"),
    "unwritable name": (lambda d, png: ["upscale", png, "-o", d / ("x" * 300 + ".png")], 1, "cannot write"),
    "unknown extension": (lambda d, png: ["upscale", png, "-o", d / "out.heic"], 2, "unknown extension"),
    "bad tile": (lambda d, png: ["upscale", png, "-o", d / "out.png", "--tile", "big"], 2, "--tile"),
    "missing model file": (lambda d, png: ["upscale", png, "-o", d / "out.png", "--model", d / "m.pth"], 1,
                           "no model named"),
    "not an RRDBNet": (lambda d, png: ["upscale", png, "-o", d / "out.png", "--model", _other_model(d)], 1,
                       "not an RRDBNet"),
    "unavailable device": (lambda d, png: ["upscale", png, "-o", d / "out.png", "--device", "cuda:7"], 1, "CUDA"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(d: Path) -> Path:
    path = d / "pipe.png"
    os.mkfifo(path)
    return path


def _other_model(d: Path) -> Path:
    path = d / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_one_line_and_leaves_nothing(case: str, png: Path, tiny_weights: Path, tmp_path: Path) -> None:
    if case == "unavailable device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    make_args, code, fragment = BAD_INPUTS[case]
    args = make_args(tmp_path, png)
    if "--model" not in args:
        args += ["--model", tiny_weights]
    before = leftovers(tmp_path)
    proc = esrgan(*args)
    assert_one_line_error(proc, code, fragment)
    if code == 1:
        assert proc.stderr.startswith("esrgan: error: ")
    assert leftovers(tmp_path) == before


def test_malicious_checkpoint_is_refused_and_runs_nothing(png: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    payload = f"import os; os.system('touch {marker}')"
    # A hand-written pickle calling builtins.exec: what a booby-trapped checkpoint contains.
    evil.write_bytes(b"cbuiltins\nexec\n(V" + payload.encode() + b"\ntR.")
    proc = esrgan("upscale", png, "-o", tmp_path / "out.png", "--model", evil)
    assert_one_line_error(proc, 1, "refused to load")
    assert not marker.exists()
    assert leftovers(tmp_path) == []


def test_registry_model_offline_and_not_cached(png: Path, tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "ESRGAN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = esrgan("upscale", png, "-o", tmp_path / "out.png", "--model", "esrgan-x4", env=env)
    assert_one_line_error(proc, 1, "'esrgan-x4'", "databuzzword/esrgan/RRDB_ESRGAN_x4.pth@bc7c483",
                          "HF_HUB_OFFLINE is set")
    assert leftovers(tmp_path) == []


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path: Path) -> None:
    # Big enough that the run is still going when the signal comes.
    model = tiny_model(RRDBConfig(num_feat=16, num_block=2, num_grow=8))
    weights = tmp_path / "m.safetensors"
    save_safetensors(model.state_dict(), model.config, weights)
    src = tmp_path / "big.png"
    Image.fromarray((random_image(1536, 1536) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "out.png"
    # The signal is sent once the model runs (not at a guessed time), however slow the machine; the image is big
    # enough that it is still running then.
    computing = tmp_path / "model-running"
    proc = start_esrgan_watching(weights, computing, "upscale", src, "-o", out, "--model", weights, "--tile", "64")
    wait_until(computing.exists, proc, "the model to run")
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip() == "esrgan: interrupted"
    assert leftovers(tmp_path) == []


def test_format_bmp_in_a_batch_as_with_an_output_file(png: Path, tmp_path: Path) -> None:
    """`-o x.bmp` worked while `--format bmp` was refused: a batch now takes every format a file does."""
    out = tmp_path / "out"
    proc = esrgan("upscale", png.parent, "-o", out, "--format", "bmp", "--model", "compact-x4", "-q")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "in.bmp") as written:
        assert written.format == "BMP" and written.size == (48, 64)
    single = esrgan("upscale", png, "-o", tmp_path / "one.bmp", "--model", "compact-x4", "-q")
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "one.bmp").read_bytes() == (out / "in.bmp").read_bytes()


@pytest.mark.parametrize("command", [["upscale", "IN", "-o", "OUT"], ["eval", "bicubic", "--hr", "IN"],
                                     ["train", "--stage", "psnr", "--data", "IN", "--out", "OUT"]])
def test_a_device_name_of_no_known_form_is_a_usage_error(command: list[str], png: Path, tmp_path: Path) -> None:
    """`--device gpu` exited 1 where every other bad option value exits 2; a device this machine lacks stays 1."""
    args = [str(png) if a == "IN" else str(tmp_path / "out.png") if a == "OUT" else a for a in command]
    proc = esrgan(*args, "--device", "gpu")
    assert proc.returncode == 2, proc.stderr
    assert "unknown device 'gpu' (use auto, cpu, cuda, cuda:N or mps)" in proc.stderr and "Traceback" not in proc.stderr
    assert leftovers(tmp_path) == []
