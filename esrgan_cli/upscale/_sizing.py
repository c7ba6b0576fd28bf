"""How large tiles are: the activation memory a model needs per input pixel, and the tile sizes that fit a budget.

`tiling.py` cuts an image into the tiles these sizes give; `engine.py` runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from esrgan_cli.model.arch import TAIL_REACH, RRDBConfig


def trunk_bytes_per_pixel(config: RRDBConfig, dtype: torch.dtype) -> float:
    """Peak memory of the trunk per input pixel: a dense block's inputs, its growing concatenations and the skip
    connections, at feature resolution. Measured on CPU (fp32, 23-block ×4): 3.7 kB; this gives 4.2 kB."""
    size = torch.finfo(dtype).bits // 8
    f, g = config.num_feat, config.num_grow
    return size * (7 * f + 2 * (f + 4 * g)) * 1.25 / config.unshuffle**2


def tail_bytes_per_pixel(config: RRDBConfig, dtype: torch.dtype) -> float:
    """Peak memory of the tail per input pixel: num_feat planes at scale² pixels, about two of them alive at once
    after the last upsampling. Measured on CPU (fp32, ×4): 9.0 kB; this gives 10.2 kB."""
    size = torch.finfo(dtype).bits // 8
    return size * 2.5 * config.num_feat * config.scale**2


def auto_tile(height: int, width: int, overlap: int, per_pixel: float, budget: int) -> int:
    """0 (whole image) if it fits the budget, else the largest core size whose window fits."""
    if height * width * per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / per_pixel))
    return max(32, (side - 2 * overlap) // 8 * 8)


def tile_sizes(
    config: RRDBConfig, dtype: torch.dtype, budget: Callable[[], int], height: int, width: int, tile: int | None,
    overlap: int,
) -> tuple[int, int]:
    """(trunk tile, tail tile) for `--tile`; 0 means whole.

    `tile` sets the tail's tiles, where the memory is. The trunk gets the largest tiles that fit the memory a plain
    `tile` tile with `overlap` context needs (for the ×4 model at --tile 64 and overlap 48, trunk tiles of about
    200), so for most images it runs whole and the output equals the untiled one exactly. None picks both from
    `budget()`, the bytes the device has for one block."""
    trunk_px = trunk_bytes_per_pixel(config, dtype)
    tail_px = tail_bytes_per_pixel(config, dtype)
    if tile == 0:
        return 0, 0
    if tile is None:
        available = budget() // 2
        reach = TAIL_REACH * config.unshuffle
        return (auto_tile(height, width, overlap, trunk_px, available),
                auto_tile(height, width, reach, tail_px, available))
    window = (tile + 2 * overlap) * math.sqrt((trunk_px + tail_px) / trunk_px)
    trunk = max(tile, int(window) - 2 * overlap)
    return (0 if trunk >= max(height, width) else trunk), tile
