"""Running an RRDBNet on an image, block by block: the per-block compute behind `tiling.run_blocks`. No image files or
formats here: `pipeline.py` turns decoded images into the arrays this fills, and `upscaler.py` adds the public
`Upscaler.upscale`.

The image stays in host memory and only the block in flight is on the device. A block is a trunk tile (the low-
resolution part, nearly all the arithmetic) and the tail tiles that cover its core (the upsampling part, nearly all
the memory). Tiling and the out-of-memory policy live in `tiling.py`, tile sizes in `sizing.py`; this module
supplies the compute, the fp16 overflow fallback, and the self-ensemble (`tta`) as a wrapper on that compute. A
window that touches the image's edge is grown there by `EDGE_PAD` reflected pixels, so the model's own zero padding
never shifts the border's levels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from esrgan_cli.defaults import EDGE_PAD, MIN_TILE
from esrgan_cli.errors import WeightsError
from esrgan_cli.image.convert import luma, to_dtype
from esrgan_cli.model.arch import TAIL_REACH, RRDBNet
from esrgan_cli.model.weights import LoadedWeights, build_model
from esrgan_cli.upscale._sizing import tile_sizes
from esrgan_cli.upscale._tiling import (
    ENSEMBLE,
    Region,
    StagedTile,
    Tile,
    TilePlan,
    TileTooLarge,
    grow_at_edges,
    plan_tiles,
    run_blocks,
    take_reflected,
)
from esrgan_cli.upscale.device import Placement, memory_budget

Sink = Callable[[Region, torch.Tensor], None]
"""Receives a tail tile's output (C×h×w on the device) and where it goes, in output pixels of the window."""


class Engine:
    """A model on its device, filling canvases (`upscale_into`); `upscaler.Upscaler` adds images in and out."""

    def __init__(self, weights: LoadedWeights, placement: Placement) -> None:
        c = weights.config
        if c.in_channels not in (1, 3, 4) or c.out_channels not in (1, 3, 4):
            raise WeightsError(
                f"{weights.path}: a model with {c.in_channels} input and {c.out_channels} output channels "
                "cannot upscale images (expected 1, 3 or 4)"
            )
        self.weights = weights
        self.config = weights.config
        self.placement = placement
        self.fp32_retries = 0
        self._fp32_model: RRDBNet | None = None
        # cuDNN's autotuning (torch.backends.cudnn.benchmark) is left off: it tunes every new tile shape, and each
        # image brings new ones. Measured on an H200, x4plus fp16 at 2048²: 31.1 s for the first image with it
        # (29 s of tuning), 2.05 s after; 2.03 s from the first image without it.
        self.model = self._place(build_model(weights), placement.dtype)

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def align(self) -> int:
        return self.config.unshuffle

    @property
    def channels(self) -> int:
        """Channels of the canvas `upscale_into` fills: 4 for RGBA models (alpha through the model), else 3."""
        return 4 if self.config.out_channels == 4 else 3

    def tile_sizes(self, height: int, width: int, tile: int | None, overlap: int) -> tuple[int, int]:
        """(trunk tile, tail tile) for `--tile` on this model and device (see `sizing.tile_sizes`)."""
        return tile_sizes(self.config, self.placement.dtype, lambda: memory_budget(self.placement.device), height,
                          width, tile, overlap)

    def upscale_into(
        self, image: np.ndarray, canvas: np.ndarray, tile: int | None, overlap: int,
        on_progress: Callable[[int], None] | None = None, *, tta: bool = False, min_tile: int = MIN_TILE,
    ) -> int:
        """Upscale H×W×C float32 `image` (C = 3, or 4 with alpha) into `canvas` ((H·s)×(W·s)×`channels`, any
        dtype); returns the blocks run.

        The trunk runs on tiles with `overlap` context, the tail on sub-tiles with exact context; `tta` averages
        each block over the 8 flips and turns. Out of memory, a block is split (see `tiling.run_blocks`)."""
        height, width = image.shape[:2]
        if canvas.shape[:2] != (height * self.scale, width * self.scale):
            raise ValueError(f"canvas is {canvas.shape[:2]}, expected {(height * self.scale, width * self.scale)}")
        trunk, tail = self.tile_sizes(height, width, tile, overlap)
        plan = TilePlan(height, width, trunk, tail, overlap, TAIL_REACH * self.align, self.align, min_tile)
        compute = self._ensemble_block if tta else self._plain_block
        return run_blocks(plan, lambda block: compute(image, canvas, block), on_progress)

    # -- per-block compute -------------------------------------------------------------------------------------

    def _plain_block(self, image: np.ndarray, canvas: np.ndarray, block: StagedTile, pad: int = EDGE_PAD) -> None:
        height, width = image.shape[:2]
        outer, s = grow_at_edges(block.trunk.window, height, width, pad), self.scale
        tails = [Tile(t.core.relative_to(outer), grow_at_edges(t.window, height, width, pad).relative_to(outer))
                 for t in block.tails]

        def paste(where: Region, out: torch.Tensor) -> None:
            dest = Region(where.top + outer.top * s, where.left + outer.left * s,
                          where.bottom + outer.top * s, where.right + outer.left * s)
            canvas[dest.slices()] = _to_host(out, canvas.dtype, self.channels)

        self._checked(take_reflected(image, outer), tails, paste)

    def _ensemble_block(self, image: np.ndarray, canvas: np.ndarray, block: StagedTile) -> None:
        """The block's core, averaged over the 8 transforms of its window (each an exact staged pass)."""
        height, width = image.shape[:2]
        outer, core, s = grow_at_edges(block.trunk.window, height, width, EDGE_PAD), block.trunk.core, self.scale
        window = take_reflected(image, outer)
        core_rel = core.relative_to(outer)
        total = np.zeros((core.height * s, core.width * s, self.channels), np.float32)
        tail = max(max(t.core.height, t.core.width) for t in block.tails)
        for t in ENSEMBLE:
            turned = np.ascontiguousarray(t.apply(window))
            h, w = turned.shape[:2]
            area = t.region(core_rel, outer.height, outer.width)
            out = np.empty((area.height * s, area.width * s, self.channels), np.float32)

            def keep(where: Region, result: torch.Tensor, area: Region = area, out: np.ndarray = out) -> None:
                out[where.relative_to(area.scaled(s)).slices()] = _to_host(result, np.dtype(np.float32), self.channels)

            # Tails are planned afresh in the turned frame: turning a window whose side is not a multiple of the
            # pixel-unshuffle factor would put the turned tiles' edges between unshuffled pixels.
            tails = plan_tiles(h, w, tail, TAIL_REACH * self.align, self.align, area=area)
            self._checked(turned, tails, keep)
            total += t.invert(out)
        canvas[core.scaled(s).slices()] = to_dtype(total / len(ENSEMBLE), canvas.dtype)

    def _checked(self, window: np.ndarray, tails: list[Tile], sink: Sink) -> None:
        """Run a window's trunk and tails into `sink`; a half-precision overflow redoes all of it in fp32. Out of
        memory raises TileTooLarge, once the failed attempt's memory is released (see `_out_of_memory`)."""
        try:
            if not self._block(self.model, self.placement.dtype, window, tails, sink):
                self.fp32_retries += 1
                self._block(self._fp32(), torch.float32, window, tails, sink)
            return
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(e):
                raise
        # Raised here, after the handler: inside it, the out-of-memory error's traceback still holds the failed
        # attempt's frames and so its device tensors (the trunk's features), and a smaller retry would run beside
        # them. Measured on an H200 under a 1 GiB cap: 794 MiB still held at the first retry, and no tile size fit.
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()
        raise TileTooLarge

    @torch.inference_mode()
    def _block(self, model: RRDBNet, dtype: torch.dtype, window: np.ndarray, tails: list[Tile], sink: Sink) -> bool:
        """Trunk on `window`, then each tail tile (regions relative to the window); False if fp16 overflowed."""
        check = dtype != torch.float32
        u, s = self.config.unshuffle, self.config.scale
        feat = model.trunk(self._input(window, dtype))
        if check and not bool(torch.isfinite(feat).all()):
            return False
        for t in tails:
            w = t.window
            # Tail windows start on multiples of u; only one ending at the window's edge can end between two.
            out = model.tail(feat[:, :, w.top // u: -(-w.bottom // u), w.left // u: -(-w.right // u)])
            if check and not bool(torch.isfinite(out).all()):
                return False
            crop = t.output_crop(s)
            sink(t.core.scaled(s), out[0, :, crop.top:crop.bottom, crop.left:crop.right])
        return True

    def _input(self, window: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """H×W×C float32 → 1×C'×H×W on the device, channels-last, padded to the pixel-unshuffle factor."""
        want = self.config.in_channels
        if want == 1:
            window = luma(window)[..., None]
        elif want == 3:
            window = window[..., :3]
        elif window.shape[2] == 3:
            window = np.concatenate([window, np.ones_like(window[..., :1])], axis=2)  # opaque
        # An H×W×C array seen as 1×C×H×W already has channels-last strides: no transpose copy.
        x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None].permute(0, 3, 1, 2)
        if self.placement.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.placement.device, dtype, non_blocking=True)
        h, w = x.shape[-2:]
        u = self.config.unshuffle
        pad_h, pad_w = (-h) % u, (-w) % u
        if pad_h or pad_w:
            # Pixel-unshuffle needs multiples of its factor; BasicSR pads by reflection too.
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return x.contiguous(memory_format=torch.channels_last)

    def _fp32(self) -> RRDBNet:
        if self._fp32_model is None:
            self._fp32_model = self._place(build_model(self.weights), torch.float32)
        return self._fp32_model

    def _place(self, model: RRDBNet, dtype: torch.dtype) -> RRDBNet:
        model = model.to(self.placement.device, dtype)
        if self.placement.device.type in ("cuda", "cpu"):
            # oneDNN and cuDNN both run 3x3 convs fastest on NHWC (about 1.2× on a 2-core AVX2 CPU).
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model


def _to_host(out: torch.Tensor, dtype: np.dtype[Any], channels: int) -> np.ndarray:
    """C×H×W model output → H×W×`channels` in `dtype` (integers scaled to their range), converted on the device
    so less crosses the bus. One-channel output is repeated."""
    out = out.permute(1, 2, 0).float().clamp(0, 1)
    if np.issubdtype(dtype, np.integer):
        # The rounding of image.convert.to_dtype, on the device: round half to even of value × max, in float32.
        out = (out * np.iinfo(dtype).max).round_().to(torch.int32)
    host = out.cpu().numpy().astype(dtype, copy=False)
    return np.repeat(host, channels, axis=2) if host.shape[2] == 1 else host[..., :channels]


def _out_of_memory(e: RuntimeError) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's."""
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
