"""Shared fixtures: tiny seeded models, weight files in every layout, and the ../shared data when present."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from esrgan_cli.eval._metrics import psnr as metrics_psnr
from esrgan_cli.model.arch import RRDBConfig, RRDBNet, init_weights
from esrgan_cli.model.weights import save_safetensors

ROOT = Path(__file__).resolve().parent.parent

# Deadlines for waiting on another process. They only guard against a hang: on a busy 2-core machine a step that
# takes a second alone may take a minute, so tests wait for something they can observe, never for a fixed time.
WAIT_S = 600.0

# `python -m esrgan_cli ARGS`, except that MARKER is created when the model first runs: an observable "the command is
# computing" for tests that interrupt it. An audit hook arms a profile hook once the weights file is opened, and the
# profile hook fires on the first call of the network's code (arch.py) after that; the program itself is unchanged.
_WATCHING_LAUNCHER = r"""
import os, sys
weights, marker = os.path.realpath(sys.argv[1]), sys.argv[2]
del sys.argv[1:3]  # what is left is what `esrgan` gets
arch = os.path.join("esrgan_cli", "model", "arch.py")
state = {"armed": False}
def profile(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_name in ("forward", "trunk", "tail") and code.co_filename.endswith(arch):
        sys.setprofile(None)
        with open(marker, "w"):
            pass
def audit(event, args):
    if state["armed"] or event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    if os.path.realpath(os.fspath(args[0])) == weights:
        state["armed"] = True
        sys.setprofile(profile)
sys.addaudithook(audit)
from esrgan_cli.cli import main
main()
"""


def shared_dir() -> Path:
    return Path(os.environ.get("ESRGAN_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "weights").is_dir():
        pytest.skip(f"shared data not found at {path} (set ESRGAN_SHARED)")
    return path


def default_sigint() -> None:
    """For Popen(preexec_fn=...): Ctrl-C as in a terminal. A test run started in the background (`pytest &`) ignores
    SIGINT and its children inherit that, so Python would not turn the test's SIGINT into a KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_esrgan_watching(weights: Path, marker: Path, *args: str | Path) -> subprocess.Popen[str]:
    """Start `esrgan ARGS` (pipes for stdout and stderr); `marker` appears once the model from the `weights` file
    runs."""
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHING_LAUNCHER, str(weights), str(marker), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=default_sigint,
    )


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, limit_s: float = WAIT_S) -> None:
    """Poll `condition` while `proc` runs; fail, saying what was awaited, if `proc` ends first or time runs out."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"waited {limit_s:.0f} s for {what}")
        time.sleep(0.05)


def tiny_model(config: RRDBConfig | None = None, seed: int = 0) -> RRDBNet:
    config = config or RRDBConfig(num_feat=8, num_block=1, num_grow=4)
    torch.manual_seed(seed)
    model = RRDBNet(config)
    # Default (larger) init so outputs vary visibly across the image; the paper's
    # x0.1 scaling makes tiny random nets nearly constant.
    init_weights(model, scale=1.0, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.05)
    return model.eval()


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    """A 1-block, 8-feature x4 model saved as our own safetensors."""
    model = tiny_model()
    path = tmp_path / "tiny.safetensors"
    save_safetensors(model.state_dict(), model.config, path)
    return path


def to_oldest_layout(sd: dict[str, torch.Tensor], config: RRDBConfig) -> dict[str, torch.Tensor]:
    """The inverse of the loader's mapping, written independently from the old ESRGAN architecture."""
    out = {}
    n_up = config.upsample_stages
    top = {"conv_first": 0, "conv_hr": 3 * n_up + 2, "conv_last": 3 * n_up + 4}
    top.update({f"conv_up{i}": 3 * i for i in range(1, n_up + 1)})
    for key, value in sd.items():
        if m := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        elif key.startswith("conv_body."):
            out[f"model.1.sub.{config.num_block}.{key.split('.')[1]}"] = value
        else:
            name, kind = key.split(".")
            out[f"model.{top[name]}.{kind}"] = value
    return out


def to_esrgan_repo_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"conv_body": "trunk_conv", "conv_hr": "HRconv", "conv_first": "conv_first", "conv_last": "conv_last"}
    out = {}
    for key, value in sd.items():
        if m := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}.{m[4]}"] = value
        else:
            name, kind = key.split(".")
            name = names.get(name) or name.replace("conv_up", "upconv")
            out[f"{name}.{kind}"] = value
    return out


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-plus-noise RGB float image, so models see structure and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], axis=2) * 0.3 + 0.5
    return np.clip(base + rng.normal(0, 0.1, (h, w, 3)), 0, 1).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR of float images in [0, 1] by default."""
    return metrics_psnr(a, b, peak)


Forward = Callable[[torch.Tensor], torch.Tensor]


def run_tiled(
    image: np.ndarray, model: Callable[[np.ndarray], np.ndarray], scale: int, canvas: np.ndarray, *, tile: int,
    overlap: int, align: int = 1, on_progress: Callable[[int], None] | None = None,
) -> int:
    """Upscale `image` (H×W×C float32) into `canvas` ((H·s)×(W·s)×C', any dtype) with a plain tile callback.

    Each block's window goes through `model` whole and its core is pasted; returns the number of model calls. A
    plain tile callback over the engine's tiler, for testing the geometry with models whose reach is known."""
    from esrgan_cli.image.convert import to_dtype
    from esrgan_cli.upscale._tiling import StagedTile, TilePlan, run_blocks

    height, width = image.shape[:2]
    expected = (height * scale, width * scale)
    if canvas.shape[:2] != expected:
        raise ValueError(f"canvas is {canvas.shape[:2]}, expected {expected}")

    def paste(block: StagedTile) -> None:
        t = block.trunk
        out = model(image[t.window.slices()])
        if out.shape[:2] != (t.window.height * scale, t.window.width * scale):
            raise ValueError(f"model returned {out.shape[:2]} for a {t.window.height}×{t.window.width} window")
        canvas[t.core.scaled(scale).slices()] = to_dtype(out[t.output_crop(scale).slices()], canvas.dtype)

    plan = TilePlan(height, width, tile, 0, overlap, align=align)
    return run_blocks(plan, paste, on_progress)


def window_forward(up: Any, window: np.ndarray) -> np.ndarray:
    """The engine's compute on one H×W×C float32 window, whole, with no edge padding (the window may be cut from
    inside an image: reflecting its own edges would invent content) → its float32 output."""
    from esrgan_cli.model.arch import TAIL_REACH
    from esrgan_cli.upscale._tiling import plan_staged

    h, w = window.shape[:2]
    out = np.empty((h * up.scale, w * up.scale, up.channels), np.float32)
    up._plain_block(window, out, plan_staged(h, w, 0, 0, 0, TAIL_REACH * up.align, up.align)[0], pad=0)
    return out


def padded_forward(up: Any, image: np.ndarray) -> np.ndarray:
    """What the engine computes for a whole image, built independently: the plain window callback on the image
    reflect-padded by EDGE_PAD on every side, cropped back."""
    from esrgan_cli.defaults import EDGE_PAD

    padded = np.pad(image, ((EDGE_PAD, EDGE_PAD), (EDGE_PAD, EDGE_PAD), (0, 0)), mode="reflect")
    e = EDGE_PAD * up.scale
    return window_forward(up, np.ascontiguousarray(padded))[e:-e, e:-e]


def out_of_memory_above(fn: Forward, pixels: int) -> Forward:
    """`fn`, but raising CUDA's out-of-memory error for inputs of more than `pixels` pixels."""

    def limited(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] * x.shape[-2] > pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fn(x)

    return limited


def run_upscaler(up: Any, rgb: np.ndarray, tile: int | None, overlap: int, dtype: type = np.float32,
                 tta: bool = False) -> tuple[np.ndarray, int]:
    """An H×W×3 float image through `Upscaler.upscale_into`: the canvas in `dtype` and the blocks run."""
    canvas = np.empty((rgb.shape[0] * up.scale, rgb.shape[1] * up.scale, up.channels), dtype)
    return canvas, up.upscale_into(rgb, canvas, tile, overlap, tta=tta)
