"""Tile geometry and stitching with fake models: pure numpy, no torch."""

from __future__ import annotations

import numpy as np
import pytest

from esrgan_cli.errors import OutOfMemoryError
from esrgan_cli.upscale._tiling import ENSEMBLE, Region, TileTooLarge, plan_tiles, split_evenly

from conftest import random_image, run_tiled


def box_model(radius: int, scale: int):
    """A fake upscaler whose receptive field is `radius` pixels: a zero-padded box mean, then nearest ×scale."""

    def model(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)))
        acc = np.zeros_like(x, dtype=np.float64)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                acc += padded[dy : dy + h, dx : dx + w]
        out = (acc / (2 * radius + 1) ** 2).astype(np.float32)
        return out.repeat(scale, axis=0).repeat(scale, axis=1)

    return model


@pytest.mark.parametrize("h,w,tile,overlap,align", [(37, 53, 16, 5, 1), (64, 64, 32, 0, 1), (50, 30, 17, 8, 4),
                                                    (10, 10, 0, 3, 1), (5, 200, 64, 10, 2)])
def test_cores_partition_the_image_and_windows_hold_their_context(h, w, tile, overlap, align) -> None:
    tiles = plan_tiles(h, w, tile, overlap, align)
    owner = np.zeros((h, w), dtype=int)
    for t in tiles:
        owner[t.core.slices()] += 1
        win, core = t.window, t.core
        assert win.top <= core.top and win.left <= core.left and win.bottom >= core.bottom and win.right >= core.right
        ctx = -(-overlap // align) * align
        assert win.top == max(0, core.top - ctx) and win.bottom == min(h, core.bottom + ctx)
        assert win.left == max(0, core.left - ctx) and win.right == min(w, core.right + ctx)
        if tile:
            assert core.height <= tile + align and core.width <= tile + align
        for cut in (core.top, core.left):
            assert cut % align == 0
    assert (owner == 1).all()


def test_tiles_are_sized_evenly() -> None:
    pieces = split_evenly(0, 100, 64)
    assert pieces == [(0, 50), (50, 100)]  # not 64 + 36
    sizes = [b - a for a, b in split_evenly(0, 1000, 64)]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= 64


@pytest.mark.parametrize("radius,scale", [(1, 4), (3, 2), (2, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_context_wider_than_receptive_field_gives_exactly_the_untiled_result(radius, scale, dtype) -> None:
    image = random_image(45, 61, seed=radius)
    model = box_model(radius, scale)
    whole = np.zeros((45 * scale, 61 * scale, 3), dtype)
    assert run_tiled(image, model, scale, whole, tile=0, overlap=0) == 1
    tiled = np.zeros_like(whole)
    calls = run_tiled(image, model, scale, tiled, tile=16, overlap=radius)
    assert calls == 12
    assert np.array_equal(tiled, whole)


def test_too_little_context_shows_seams() -> None:
    """The exactness above is not vacuous: with context smaller than the field, tiles differ."""
    image = random_image(40, 40)
    model = box_model(3, 2)
    whole = np.zeros((80, 80, 3), np.float32)
    run_tiled(image, model, 2, whole, tile=0, overlap=0)
    tiled = np.zeros_like(whole)
    run_tiled(image, model, 2, tiled, tile=16, overlap=1)
    assert not np.allclose(tiled, whole, atol=1e-3)


def test_too_large_tiles_are_halved_and_still_exact() -> None:
    image = random_image(60, 60, seed=2)
    inner = box_model(2, 2)
    seen: list[tuple[int, int]] = []

    def limited(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[:2])
        if x.shape[0] * x.shape[1] > 40 * 40:
            raise TileTooLarge
        return inner(x)

    whole = np.zeros((120, 120, 3), np.float32)
    run_tiled(image, inner, 2, whole, tile=0, overlap=0)
    tiled = np.zeros_like(whole)
    calls = run_tiled(image, limited, 2, tiled, tile=0, overlap=2)
    assert seen[0] == (60, 60) and calls == len(seen) > 1
    assert np.array_equal(tiled, whole)


def test_halving_stops_at_the_minimum_tile_with_a_one_line_error() -> None:
    sizes: list[int] = []

    def never(x: np.ndarray) -> np.ndarray:
        sizes.append(max(x.shape[:2]))
        raise TileTooLarge

    with pytest.raises(OutOfMemoryError) as caught:
        run_tiled(random_image(64, 64), never, 2, np.zeros((128, 128, 3), np.float32), tile=64, overlap=4)
    assert "\n" not in str(caught.value) and "16-pixel tiles" in str(caught.value)
    assert sizes[0] == 64 and min(sizes) == 16 + 4  # halved 64 → 32 → 16 (a corner tile: context on one side)


def test_transforms_map_regions_like_the_arrays() -> None:
    h, w = 7, 11
    region = Region(1, 2, 4, 9)
    mask = np.zeros((h, w), bool)
    mask[region.slices()] = True
    for t in ENSEMBLE:
        turned = t.apply(mask)
        expected = np.zeros_like(turned)
        expected[t.region(region, h, w).slices()] = True
        assert np.array_equal(turned, expected), t
        assert np.array_equal(t.invert(turned), mask)
    assert len({(t.turns, t.flip) for t in ENSEMBLE}) == 8


def test_progress_counts_every_input_pixel_once() -> None:
    done: list[int] = []
    image = random_image(33, 47)
    run_tiled(image, box_model(1, 2), 2, np.zeros((66, 94, 3), np.uint8), tile=16, overlap=2,
              on_progress=done.append)
    assert sum(done) == 33 * 47


def test_region_geometry() -> None:
    r = Region(2, 3, 10, 7)
    assert (r.height, r.width, r.area) == (8, 4, 32)
    assert r.scaled(4) == Region(8, 12, 40, 28)
    assert r.relative_to(Region(1, 1, 20, 20)) == Region(1, 2, 9, 6)
