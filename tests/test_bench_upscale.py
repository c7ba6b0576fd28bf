"""The performance benchmark's baseline computes what RealESRGANer computes (no timings asserted here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from esrgan_cli.model.arch import RRDBConfig

from conftest import random_image, tiny_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks/bench_upscale.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_upscale", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_basicsr_forward_matches_the_model() -> None:
    net = tiny_model(RRDBConfig(num_feat=16, num_block=2, num_grow=8))
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(bench().basicsr_forward(net)(x), net(x), atol=1e-5)


def test_baseline_tiles_crop_and_paste_and_match_untiled_with_enough_padding() -> None:
    b = bench()
    net = tiny_model(RRDBConfig(num_feat=16, num_block=1, num_grow=8))
    rgb = (random_image(30, 26, seed=2) * 255).round().astype(np.uint8)
    whole, passes = b.baseline_upscale(b.basicsr_forward(net), rgb, 4, 0, 10, "cpu", False)
    assert passes == 1 and whole.shape == (120, 104, 3) and whole.dtype == np.uint8
    padded, passes = b.baseline_upscale(b.basicsr_forward(net), rgb, 4, 8, 40, "cpu", False)
    assert passes == 16 and np.abs(padded.astype(int) - whole).max() <= 1
    tight, _ = b.baseline_upscale(b.basicsr_forward(net), rgb, 4, 8, 1, "cpu", False)
    assert np.abs(tight.astype(int) - whole).max() > 1  # one pixel of context really is too little
    with torch.inference_mode():
        x = torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1) / 255)[None]
        expected = (net(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(whole - expected).max() <= 1


def test_test_image_is_a_centre_crop_enlarged_when_needed(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "small.png"
    Image.fromarray((random_image(40, 60, seed=1) * 255).astype(np.uint8)).save(src)
    b = bench()
    assert b.test_image(src, 32).shape == (32, 32, 3)
    assert b.test_image(src, 100).shape == (100, 100, 3)
    assert b.test_image(tmp_path / "missing.png", 16).shape == (16, 16, 3)
