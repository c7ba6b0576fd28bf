"""Tile geometry and stitching: pure numpy, no torch; the model is a callback.

Each tile owns a *core* of input pixels and is run on a *window*: the core plus
`overlap` pixels of context on every side that has image there. Only the core's
part of the output is pasted, so every output pixel is written exactly once and
the canvas can stay in the output's integer type. With context at least as wide
as the model's receptive field the result equals the untiled one exactly; for
RRDBNet (receptive field far larger than any tile) the context is what closes
the gap, not blending.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from esrgan_cli.defaults import MIN_TILE
from esrgan_cli.errors import OutOfMemoryError


class TileTooLarge(Exception):
    """Raised by a block's compute (for example on out-of-memory) to have the block split in half."""


@dataclass(frozen=True)
class Region:
    """A half-open rectangle [top, bottom) × [left, right) in pixels."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def area(self) -> int:
        return self.height * self.width

    def scaled(self, s: int) -> Region:
        return Region(self.top * s, self.left * s, self.bottom * s, self.right * s)

    def relative_to(self, outer: Region) -> Region:
        return Region(self.top - outer.top, self.left - outer.left, self.bottom - outer.top, self.right - outer.left)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)


def grow_at_edges(r: Region, height: int, width: int, by: int) -> Region:
    """`r` grown by `by` pixels past each edge of the height×width image that it touches."""
    return Region(r.top - by if r.top == 0 else r.top, r.left - by if r.left == 0 else r.left,
                  r.bottom + by if r.bottom == height else r.bottom, r.right + by if r.right == width else r.right)


def reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices of [start, stop) on an axis of `size` pixels, reflected at its ends (as `np.pad` "reflect" does,
    again and again when the span is longer than the axis)."""
    before, after = max(0, -start), max(0, stop - size)
    return np.pad(np.arange(size), (before, after), mode="reflect")[start + before: stop + before]


def take_reflected(image: np.ndarray, r: Region) -> np.ndarray:
    """The pixels of `r`, which may reach past the image's edges; the part outside is the whole image's reflection,
    so every tile of an image sees the same padding. Inside the image this is a view: callers copy as they need."""
    height, width = image.shape[:2]
    if r.top >= 0 and r.left >= 0 and r.bottom <= height and r.right <= width:
        return image[r.slices()]
    return image[reflect_indices(r.top, r.bottom, height)[:, None], reflect_indices(r.left, r.right, width)[None, :]]


@dataclass(frozen=True)
class Tile:
    core: Region
    window: Region

    def output_crop(self, scale: int) -> Region:
        """Where the core lies inside the model's output for the window."""
        return self.core.relative_to(self.window).scaled(scale)


def split_evenly(start: int, stop: int, max_size: int, align: int = 1) -> list[tuple[int, int]]:
    """Cut [start, stop) into the fewest pieces of at most ~max_size, all nearly equal, cuts on `align`."""
    length = stop - start
    if length <= 0:
        return []
    n = max(1, math.ceil(length / max(max_size, 1)))
    cuts = [start]
    for i in range(1, n):
        cut = start + int(round(i * length / n / align)) * align
        if cuts[-1] < cut < stop:
            cuts.append(cut)
    cuts.append(stop)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, align: int = 1, area: Region | None = None
) -> list[Tile]:
    """Tiles covering `area` (default: the whole image) with cores of at most `tile` pixels a side.

    `tile` <= 0 means one tile for the whole area. `align` keeps cuts and context
    on multiples of the model's pixel-unshuffle factor so windows group pixels
    the same way the untiled pass does.
    """
    bounds = Region(0, 0, height, width)
    area = area or bounds
    if tile <= 0:
        tile = math.ceil(max(area.height, area.width) / align) * align
    tile = max(align, tile // align * align)
    context = math.ceil(max(overlap, 0) / align) * align
    tiles = []
    for top, bottom in split_evenly(area.top, area.bottom, tile, align):
        for left, right in split_evenly(area.left, area.right, tile, align):
            core = Region(top, left, bottom, right)
            window = Region(
                max(bounds.top, top - context),
                max(bounds.left, left - context),
                min(bounds.bottom, bottom + context),
                min(bounds.right, right + context),
            )
            tiles.append(Tile(core, window))
    return tiles


@dataclass(frozen=True)
class StagedTile:
    """A trunk tile and the tail tiles that cover its core (all in input pixels).

    Tail windows are cut from the trunk window, so they read only features the trunk pass computed."""

    trunk: Tile
    tails: tuple[Tile, ...]


def plan_staged(
    height: int, width: int, trunk_tile: int, tail_tile: int, overlap: int, reach: int, align: int = 1,
    area: Region | None = None,
) -> list[StagedTile]:
    """Trunk tiles of `trunk_tile` with `overlap` context, each split into tail tiles of `tail_tile` with `reach`.

    Sizes <= 0 mean one tile for the whole area (or the whole trunk core)."""
    staged = []
    for t in plan_tiles(height, width, trunk_tile, overlap, align, area):
        tails = []
        for sub in plan_tiles(height, width, tail_tile, reach, align, area=t.core):
            w = sub.window
            clipped = Region(
                max(w.top, t.window.top), max(w.left, t.window.left),
                min(w.bottom, t.window.bottom), min(w.right, t.window.right),
            )
            tails.append(Tile(sub.core, clipped))
        staged.append(StagedTile(t, tuple(tails)))
    return staged


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut: trunk tiles with `overlap` context, tail tiles with `reach` (sizes <= 0: whole).

    Out of memory, a block is re-planned at half its size, down to `min_tile`."""

    height: int
    width: int
    trunk_tile: int
    tail_tile: int
    overlap: int
    reach: int = 0
    align: int = 1
    min_tile: int = MIN_TILE


Compute = Callable[[StagedTile], None]
"""Runs one block and writes its core's output; raises TileTooLarge to have it split."""


def run_blocks(plan: TilePlan, compute: Compute, on_progress: Callable[[int], None] | None = None) -> int:
    """Run `compute` on every block of `plan`, halving any block it refuses; returns the blocks run.

    This is the one out-of-memory policy: a block that raises TileTooLarge is re-planned over its own core at half
    the size (its tail tiles no larger), down to `plan.min_tile`, past which the failure is an OutOfMemoryError.
    `on_progress` receives the input pixels each finished block covered."""
    calls = 0

    def run(blocks: list[StagedTile], tail: int) -> None:
        nonlocal calls
        for block in blocks:
            calls += 1
            try:
                compute(block)
                refused = False
            except TileTooLarge:
                refused = True
            if not refused:
                if on_progress:
                    on_progress(block.trunk.core.area)
                continue
            # Split outside the handler: the exception's traceback holds the failed attempt's frames until the
            # handler ends, and with them whatever memory that attempt took.
            core = block.trunk.core
            half = max(core.height, core.width, plan.align) // 2
            if half < plan.min_tile:
                raise OutOfMemoryError(f"out of memory even with {max(core.height, core.width)}-pixel tiles; "
                                       "free memory, use a smaller model, or --device cpu")
            smaller = min(tail, half) if tail > 0 else half
            run(plan_staged(plan.height, plan.width, half, smaller, plan.overlap, plan.reach, plan.align, core),
                smaller)

    run(plan_staged(plan.height, plan.width, plan.trunk_tile, plan.tail_tile, plan.overlap, plan.reach, plan.align),
        plan.tail_tile)
    return calls


@dataclass(frozen=True)
class Transform:
    """One of the 8 flips and 90° turns of the self-ensemble: `turns` counter-clockwise, then a left-right flip."""

    turns: int
    flip: bool

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.rot90(array, self.turns)
        return out[:, ::-1] if self.flip else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        return np.rot90(array[:, ::-1] if self.flip else array, -self.turns)

    def region(self, r: Region, height: int, width: int) -> Region:
        """Where `r`, in a height×width frame, lies after `apply`."""
        for _ in range(self.turns % 4):
            # rot90: the pixel at (row, col) moves to (width - 1 - col, row).
            r = Region(width - r.right, r.top, width - r.left, r.bottom)
            height, width = width, height
        if self.flip:
            r = Region(r.top, width - r.right, r.bottom, width - r.left)
        return r


ENSEMBLE = tuple(Transform(turns, flip) for turns in range(4) for flip in (False, True))
