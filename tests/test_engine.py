"""Device/precision choice, fp16 overflow fallback, out-of-memory halving, the tile budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from esrgan_cli.errors import DeviceError, OutOfMemoryError
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import LoadedWeights, load_weights
from esrgan_cli.upscale._sizing import auto_tile, tail_bytes_per_pixel, trunk_bytes_per_pixel
from esrgan_cli.upscale._tiling import TileTooLarge
from esrgan_cli.upscale.device import Placement, choose_placement
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import out_of_memory_above, random_image, run_tiled, tiny_model, window_forward


def test_cpu_defaults_to_fp32_and_never_runs_half_precision() -> None:
    assert choose_placement("cpu", "auto") == Placement(torch.device("cpu"), torch.float32)
    for half in ("fp16", "bf16"):
        placement = choose_placement("cpu", half)
        assert placement.dtype == torch.float32 and placement.note and half in placement.note


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0"])
def test_unknown_devices_are_refused(device: str) -> None:
    with pytest.raises(DeviceError):
        choose_placement(device, "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(DeviceError, match="not available"):
        choose_placement("cuda", "auto")


def test_fp16_overflow_is_recomputed_in_fp32() -> None:
    """A tile whose half-precision output is not finite is redone in fp32 and counted."""
    model = tiny_model()
    sd = model.state_dict()
    sd["conv_first.weight"] = sd["conv_first.weight"] * 3e4  # > 65504 after the first conv: inf in fp16
    weights = LoadedWeights(sd, model.config, {}, Path("overflow"), torch.float32)
    image = random_image(12, 12)
    reference = window_forward(Upscaler(weights, Placement(torch.device("cpu"), torch.float32)), image)
    half = Upscaler(weights, Placement(torch.device("cpu"), torch.float16))
    with torch.inference_mode():
        raw = half.model(torch.from_numpy(image.transpose(2, 0, 1).copy())[None].half())
    assert not torch.isfinite(raw).all()  # the premise: fp16 really overflows here
    out = window_forward(half, image)
    assert half.fp32_retries == 1
    assert np.isfinite(out).all() and np.array_equal(out, reference)


def test_out_of_memory_asks_the_tiler_for_smaller_tiles(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upscaler(load_weights(tiny_weights), Placement(torch.device("cpu"), torch.float32))
    monkeypatch.setattr(up.model, "trunk", out_of_memory_above(up.model.trunk, 24 * 24))
    with pytest.raises(TileTooLarge):
        window_forward(up, random_image(40, 40))
    image = random_image(40, 40)
    canvas = np.zeros((160, 160, 3), np.float32)
    calls = run_tiled(image, lambda w: window_forward(up, w), 4, canvas, tile=0, overlap=4)
    assert calls > 1 and canvas.max() > 0


def test_out_of_memory_at_every_size_is_one_typed_line(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    up = Upscaler(load_weights(tiny_weights), Placement(torch.device("cpu"), torch.float32))
    monkeypatch.setattr(up.model, "trunk", out_of_memory_above(up.model.trunk, 0))
    for tta in (False, True):
        with pytest.raises(OutOfMemoryError) as caught:
            up.upscale_into(random_image(40, 40), np.zeros((160, 160, 3), np.uint8), None, 8, tta=tta)
        assert "\n" not in str(caught.value) and "out of memory" in str(caught.value)


def test_auto_tile_runs_whole_images_that_fit_and_tiles_those_that_do_not() -> None:
    per_pixel = trunk_bytes_per_pixel(RRDBConfig(), torch.float32) + tail_bytes_per_pixel(RRDBConfig(), torch.float32)
    assert auto_tile(100, 100, 48, per_pixel, budget=int(per_pixel * 100 * 100)) == 0
    tile = auto_tile(4000, 3000, 48, per_pixel, budget=int(per_pixel * 512 * 512))
    assert 0 < tile and (tile + 2 * 48) ** 2 * per_pixel <= per_pixel * 512 * 512 and tile % 8 == 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_activation_budget_bounds_the_measured_peak(shared: Path) -> None:
    """The per-pixel estimate behind --tile auto bounds the peak RSS of a real forward pass (CPU, fp32)."""
    # The high-water mark is reset just before the measured pass (Linux's clear_refs), so a higher peak earlier in
    # the process, e.g. while the weights were widened to fp32, cannot hide the pass's own.
    hwm = """
import re
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
def rss(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
"""
    code = hwm + """
import sys, numpy as np, torch
from pathlib import Path
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale._sizing import tail_bytes_per_pixel, trunk_bytes_per_pixel
from esrgan_cli.upscale.upscaler import Upscaler
from esrgan_cli.model.arch import TAIL_REACH
from esrgan_cli.upscale._tiling import plan_staged
def up_call(window):  # the whole window through the engine, no edge padding (conftest.window_forward)
    h, w = window.shape[:2]
    out = np.empty((h * 4, w * 4, 3), np.float32)
    up._plain_block(window, out, plan_staged(h, w, 0, 0, 0, TAIL_REACH, 1)[0], pad=0)
    return out
from esrgan_cli.model.weights import load_weights
up = Upscaler(load_weights(Path(sys.argv[1])), choose_placement("cpu", "fp32"))
up_call(np.random.rand(16, 16, 3).astype(np.float32))
image = np.random.rand(128, 128, 3).astype(np.float32)
reset_peak()
base = rss("VmRSS")
up_call(image)
per_pixel = trunk_bytes_per_pixel(up.config, torch.float32) + tail_bytes_per_pixel(up.config, torch.float32)
print((rss("VmHWM") - base) / 128 / 128, per_pixel)
"""
    trunk_code = hwm + """
import sys, torch
from pathlib import Path
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale._sizing import trunk_bytes_per_pixel
from esrgan_cli.upscale.upscaler import Upscaler
from esrgan_cli.model.weights import load_weights
up = Upscaler(load_weights(Path(sys.argv[1])), choose_placement("cpu", "fp32"))
with torch.inference_mode():
    up.model.trunk(torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    x = torch.rand(1, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    reset_peak()
    base = rss("VmRSS")
    feat = up.model.trunk(x)
print((rss("VmHWM") - base) / 256 / 256, trunk_bytes_per_pixel(up.config, torch.float32))
"""
    import subprocess
    import sys

    weights = shared / "weights/realesrgan-x4plus.fp16.safetensors"
    proc = subprocess.run([sys.executable, "-c", code, str(weights)], capture_output=True, text=True, check=True)
    measured, estimate = (float(v) for v in proc.stdout.split())
    print(f"\npeak RSS per input pixel: measured {measured:.0f} B, estimate {estimate:.0f} B")
    assert 0 < measured <= estimate
    proc = subprocess.run([sys.executable, "-c", trunk_code, str(weights)], capture_output=True, text=True, check=True)
    measured, estimate = (float(v) for v in proc.stdout.split())
    print(f"trunk alone: measured {measured:.0f} B, estimate {estimate:.0f} B")
    assert 0 < measured <= estimate
