"""Staged tiling: the trunk on large tiles, the tail on small ones with exact context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from esrgan_cli.defaults import EDGE_PAD
from esrgan_cli.model.arch import TAIL_REACH, RRDBConfig
from esrgan_cli.model.weights import LoadedWeights
from esrgan_cli.upscale._sizing import tail_bytes_per_pixel, trunk_bytes_per_pixel
from esrgan_cli.upscale._tiling import Region, plan_staged
from esrgan_cli.upscale.device import Placement
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import out_of_memory_above, padded_forward, random_image, tiny_model

CPU32 = Placement(torch.device("cpu"), torch.float32)


def upscaler(config: RRDBConfig, dtype: torch.dtype = torch.float32, scale_first: float = 1.0) -> Upscaler:
    model = tiny_model(config)
    sd = model.state_dict()
    sd["conv_first.weight"] = sd["conv_first.weight"] * scale_first
    return Upscaler(LoadedWeights(sd, config, {}, Path("tiny"), torch.float32), Placement(torch.device("cpu"), dtype))


def reference(up: Upscaler, image: np.ndarray) -> np.ndarray:
    """The plain forward pass of the whole (edge-padded) image, cropped to the image's output size."""
    return padded_forward(up, image)


@pytest.mark.parametrize("scale", [4, 2, 1])
@pytest.mark.parametrize("tail_tile", [8, 12])
def test_tail_tiles_reproduce_the_untiled_output(scale: int, tail_tile: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the trunk whole, tiling only the tail changes nothing (sizes not multiples of the unshuffle factor)."""
    up = upscaler(RRDBConfig(num_feat=16, num_block=1, num_grow=8, scale=scale))
    image = random_image(27, 34, seed=scale)
    monkeypatch.setattr(up, "tile_sizes", lambda *args: (0, tail_tile))
    canvas = np.zeros((27 * scale, 34 * scale, 3), np.float32)
    assert up.upscale_into(image, canvas, 1, 0) == 1
    expected = reference(up, image)
    assert np.abs(canvas - expected).max() < 1e-5
    assert len(plan_staged(27, 34, 0, tail_tile, 0, TAIL_REACH * up.align, up.align)[0].tails) > 1


def test_integer_canvases_round_like_the_callback_path() -> None:
    up = upscaler(RRDBConfig(num_feat=16, num_block=1, num_grow=8))
    image = random_image(20, 24, seed=3)
    expected = np.clip(np.rint(reference(up, image) * 255), 0, 255).astype(np.uint8)
    canvas = np.zeros((80, 96, 3), np.uint8)
    up.upscale_into(image, canvas, 0, 0)
    assert np.array_equal(canvas, expected)
    wide = np.zeros((80, 96, 3), np.uint16)
    up.upscale_into(image, wide, 0, 0)
    assert np.array_equal(wide, np.clip(np.rint(reference(up, image) * 65535), 0, 65535).astype(np.uint16))


def test_plan_staged_partitions_the_image_and_keeps_tails_inside_their_trunk() -> None:
    height, width = 70, 53
    plan = plan_staged(height, width, 32, 10, overlap=6, reach=4, align=2)
    covered = np.zeros((height, width), np.int32)
    for block in plan:
        outer, core = block.trunk.window, block.trunk.core
        inner = np.zeros((height, width), np.int32)
        for t in block.tails:
            w = t.window
            assert outer.top <= w.top and outer.left <= w.left and w.bottom <= outer.bottom and w.right <= outer.right
            assert w.top <= t.core.top and w.left <= t.core.left and t.core.bottom <= w.bottom
            # Reach is kept wherever the trunk window has pixels.
            assert t.core.top - w.top >= min(4, t.core.top - outer.top)
            assert w.bottom - t.core.bottom >= min(4, outer.bottom - t.core.bottom)
            assert t.core.top % 2 == 0 and t.core.left % 2 == 0
            inner[t.core.slices()] += 1
        assert (inner[core.slices()] == 1).all() and inner.sum() == core.area
        covered[core.slices()] += 1
    assert (covered == 1).all()
    assert len(plan) == 6 and all(isinstance(b.trunk.core, Region) for b in plan)


def test_a_given_tile_gives_the_trunk_tiles_of_the_same_memory() -> None:
    up = upscaler(RRDBConfig(num_feat=16, num_block=1, num_grow=8))
    trunk_px = trunk_bytes_per_pixel(up.config, torch.float32)
    full_px = trunk_px + tail_bytes_per_pixel(up.config, torch.float32)
    trunk, tail = up.tile_sizes(1000, 800, 64, 16)
    assert tail == 64 and trunk > 64
    assert (trunk + 32) ** 2 * trunk_px <= (64 + 32) ** 2 * full_px < (trunk + 33) ** 2 * trunk_px
    assert up.tile_sizes(100, 90, 64, 16) == (0, 64)  # the trunk fits whole: exact output
    assert up.tile_sizes(100, 90, 0, 16) == (0, 0)


def test_trunk_tiles_with_overlap_stay_close_and_out_of_memory_splits_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    up = upscaler(RRDBConfig(num_feat=16, num_block=1, num_grow=8))
    image = random_image(40, 40, seed=5)
    whole = reference(up, image)
    # 20-pixel blocks run on 36-pixel windows: 8 pixels of context inside the image, 8 reflected past its edge.
    monkeypatch.setattr(up.model, "trunk", out_of_memory_above(up.model.trunk, 36 * 36))
    done: list[int] = []
    canvas = np.zeros((160, 160, 3), np.float32)
    passes = up.upscale_into(image, canvas, 0, 8, on_progress=done.append)
    assert passes == 5 and sum(done) == 40 * 40  # the whole image failed, then four 20-pixel blocks
    mse = float(np.mean((canvas - whole) ** 2))
    print(f"\nsplit trunk vs whole, 8 pixels of context: {10 * np.log10(1 / mse):.1f} dB")
    assert 10 * np.log10(1 / mse) > 30


def test_fp16_overflow_in_a_block_is_redone_in_fp32() -> None:
    config = RRDBConfig(num_feat=16, num_block=1, num_grow=8)
    half = upscaler(config, torch.float16, scale_first=3e4)
    full = upscaler(config, torch.float32, scale_first=3e4)
    image = random_image(12, 12)
    canvas = np.zeros((48, 48, 3), np.float32)
    half.upscale_into(image, canvas, 0, 0)
    assert half.fp32_retries == 1
    assert np.array_equal(canvas, reference(full, image))


def test_x16_models_run_staged_with_exact_tail_tiles() -> None:
    up = upscaler(RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=16))
    image = random_image(13, 11, seed=4)
    whole = reference(up, image)
    assert whole.shape == (208, 176, 3)
    canvas = np.zeros_like(whole)
    assert up.upscale_into(image, canvas, 0, 0) == 1
    assert np.abs(canvas - whole).max() < 1e-5
    tiled = np.zeros_like(whole)
    up.upscale_into(image, tiled, 16, 0)  # tail tiles of 16 input pixels: 256 output pixels a side
    assert np.abs(tiled - whole).max() < 1e-5


def test_rgba_models_carry_alpha_through_the_model() -> None:
    """A 4-channel model sees colour and alpha together; the alpha it returns is the image's new alpha."""
    import esrgan_cli

    model = tiny_model(RRDBConfig(in_channels=4, out_channels=4, num_feat=8, num_block=1, num_grow=4))
    up = esrgan_cli.load_model(model.state_dict(), device="cpu")
    assert up.channels == 4
    rgba = np.concatenate([random_image(10, 9, seed=1), random_image(10, 9, seed=2)[..., :1]], axis=2)
    e = EDGE_PAD * 4

    def forward(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, ((EDGE_PAD, EDGE_PAD), (EDGE_PAD, EDGE_PAD), (0, 0)), mode="reflect")
        with torch.inference_mode():
            out = model(torch.from_numpy(padded.transpose(2, 0, 1).copy())[None]).clamp(0, 1)[0]
        return out.permute(1, 2, 0).numpy()[e:-e, e:-e]

    expected = forward(rgba)
    out = up.upscale(rgba)
    assert out.shape == (40, 36, 4) and np.abs(out - expected).max() < 1e-5
    # An opaque image goes in with an opaque alpha plane, and comes out without one.
    opaque = rgba[..., :3]
    colour = forward(np.concatenate([opaque, np.ones_like(opaque[..., :1])], axis=2))[..., :3]
    out3 = up.upscale(opaque)
    assert out3.shape == (40, 36, 3) and np.abs(out3 - colour).max() < 1e-5
    from PIL import Image

    pil = up.upscale(Image.fromarray(np.rint(rgba * 255).astype(np.uint8), mode="RGBA"))
    assert pil.mode == "RGBA" and pil.size == (36, 40)
