"""Running an RRDBNet on image tiles: device and precision choice, fp16 safety, memory budget.

The image stays in host memory and only the tile in flight is on the device. Whole images go through
`Upscaler.upscale_into`, which tiles the trunk and the tail separately (see `tile_sizes`); `Upscaler` itself is
also a plain tile callback for `tiling.run_tiled` (used under --tta).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from esrgan_cli.arch import TAIL_REACH, RRDBConfig, RRDBNet
from esrgan_cli.errors import DeviceError, WeightsError
from esrgan_cli.tiling import Model, StagedTile, TileTooLarge, plan_staged
from esrgan_cli.weights import LoadedWeights, build_model

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    note: str | None = None  # why the request was changed, for the user


def choose_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """Resolve `--device` and `--precision` against what this machine has."""
    if device == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise DeviceError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceError("CUDA was requested but is not available (use --device cpu)")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise DeviceError(f"no CUDA device {dev.index}: this machine has {torch.cuda.device_count()}")
        elif dev.type == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise DeviceError("MPS was requested but is not available (use --device cpu)")
        elif dev.type != "cpu":
            raise DeviceError(f"unsupported device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    if precision == "auto":
        return Placement(dev, torch.float16 if dev.type == "cuda" else torch.float32)
    if precision not in DTYPES:
        raise DeviceError(f"unknown precision {precision!r} (use auto, fp32, fp16 or bf16)")
    dtype = DTYPES[precision]
    if dev.type == "cpu" and dtype != torch.float32:
        # Half precision on the CPU is slow and lossy; it never reaches that path.
        return Placement(dev, torch.float32, f"{precision} is not used on the CPU: running in fp32")
    if dtype == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bf16 (use --precision fp16)")
    return Placement(dev, dtype)


def bytes_per_input_pixel(config: RRDBConfig, dtype: torch.dtype) -> float:
    """Peak activation memory of a whole forward pass, per input pixel (trunk and tail on the same tile)."""
    return trunk_bytes_per_pixel(config, dtype) + tail_bytes_per_pixel(config, dtype)


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


def memory_budget(device: torch.device) -> int:
    """Bytes the activations of one tile may take."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return int(_available_ram() * 0.5)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_tile(height: int, width: int, overlap: int, per_pixel: float, budget: int) -> int:
    """0 (whole image) if it fits the budget, else the largest core size whose window fits."""
    if height * width * per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / per_pixel))
    return max(32, (side - 2 * overlap) // 8 * 8)


class Upscaler:
    """The model on its device: a callback on one H×W×C float32 tile (`tiling.run_tiled`), and a staged tiled
    upscaler for whole images (`upscale_into`)."""

    def __init__(self, weights: LoadedWeights, placement: Placement) -> None:
        c = weights.config
        if c.in_channels not in (1, 3) or c.out_channels not in (1, 3):
            raise WeightsError(
                f"{weights.path}: a model with {c.in_channels} input and {c.out_channels} output channels "
                "cannot upscale images (expected 1 or 3)"
            )
        self.weights = weights
        self.config = weights.config
        self.placement = placement
        self.fp32_retries = 0
        self._fp32_model: RRDBNet | None = None
        self.model = self._place(build_model(weights), placement.dtype)
        if placement.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def align(self) -> int:
        return self.config.unshuffle

    def per_pixel_bytes(self) -> float:
        return bytes_per_input_pixel(self.config, self.placement.dtype)

    def tile_sizes(self, height: int, width: int, tile: int | None, overlap: int) -> tuple[int, int]:
        """(trunk tile, tail tile) for `--tile`; 0 means whole.

        `tile` sets the tail's tiles, where the memory is. The trunk gets the largest tiles that fit the memory a
        plain `tile` tile with `overlap` context needs (for the ×4 model at --tile 64 and overlap 48, trunk tiles
        of about 200), so for most images it runs whole and the output equals the untiled one exactly. None picks
        both from the memory budget."""
        dtype = self.placement.dtype
        trunk_px = trunk_bytes_per_pixel(self.config, dtype)
        tail_px = tail_bytes_per_pixel(self.config, dtype)
        if tile == 0:
            return 0, 0
        if tile is None:
            budget = memory_budget(self.placement.device) // 2
            reach = TAIL_REACH * self.align
            return (auto_tile(height, width, overlap, trunk_px, budget),
                    auto_tile(height, width, reach, tail_px, budget))
        window = (tile + 2 * overlap) * math.sqrt((trunk_px + tail_px) / trunk_px)
        trunk = max(tile, int(window) - 2 * overlap)
        return (0 if trunk >= max(height, width) else trunk), tile

    def _fp32(self) -> RRDBNet:
        if self._fp32_model is None:
            self._fp32_model = self._place(build_model(self.weights), torch.float32)
        return self._fp32_model

    def _place(self, model: RRDBNet, dtype: torch.dtype) -> RRDBNet:
        model = model.to(self.placement.device, dtype)
        if self.placement.device.type in ("cuda", "cpu"):
            # oneDNN and cuDNN both run 3x3 convs fastest on NHWC (about 1.2× on a 2-core AVX2 CPU).
            model = model.to(memory_format=torch.channels_last)
        return model

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        with _oom_as_tile_too_large():
            out = self._forward(self.model, tile, self.placement.dtype)
            if self.placement.dtype != torch.float32 and not bool(torch.isfinite(out).all()):
                # fp16 overflows on some images; redo this tile exactly in fp32.
                self.fp32_retries += 1
                out = self._forward(self._fp32(), tile, torch.float32)
        return _to_host(out[0], np.dtype(np.float32))

    @torch.inference_mode()
    def _forward(self, model: RRDBNet, tile: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        h, w = tile.shape[:2]
        s = self.config.scale
        return model(self._input(tile, dtype))[..., : h * s, : w * s]

    def _input(self, window: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """H×W×C float32 → 1×C×H×W on the device, channels-last, padded to the pixel-unshuffle factor."""
        if self.config.in_channels == 1:
            window = (window @ _LUMA)[..., None]
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

    def upscale_into(
        self, image: np.ndarray, canvas: np.ndarray, tile: int | None, overlap: int,
        on_progress: Callable[[int], None] | None = None, min_tile: int = 16,
    ) -> int:
        """Upscale H×W×C float32 `image` into `canvas` ((H·s)×(W·s)×3, any dtype); returns the trunk passes made.

        The trunk runs on tiles with `overlap` context, the tail on sub-tiles with exact context. Out of memory, a
        block is re-planned at half the size, down to `min_tile`."""
        height, width = image.shape[:2]
        if canvas.shape[:2] != (height * self.scale, width * self.scale):
            raise ValueError(f"canvas is {canvas.shape[:2]}, expected {(height * self.scale, width * self.scale)}")
        trunk, tail = self.tile_sizes(height, width, tile, overlap)
        reach = TAIL_REACH * self.align
        passes = 0

        def run(blocks: list[StagedTile], tail: int) -> None:
            nonlocal passes
            for block in blocks:
                try:
                    passes += 1
                    self._run_block(image, canvas, block)
                except TileTooLarge:
                    half = max(block.trunk.core.height, block.trunk.core.width, self.align) // 2
                    if half < min_tile:
                        raise
                    smaller = min(tail, half) if tail > 0 else half
                    run(plan_staged(height, width, half, smaller, overlap, reach, self.align, block.trunk.core),
                        smaller)
                    continue
                if on_progress:
                    on_progress(block.trunk.core.area)

        run(plan_staged(height, width, trunk, tail, overlap, reach, self.align), tail)
        return passes

    def _run_block(self, image: np.ndarray, canvas: np.ndarray, block: StagedTile) -> None:
        with _oom_as_tile_too_large():
            if not self._block(self.model, self.placement.dtype, image, canvas, block):
                # fp16 overflowed somewhere in this block; redo all of it exactly in fp32.
                self.fp32_retries += 1
                self._block(self._fp32(), torch.float32, image, canvas, block)

    @torch.inference_mode()
    def _block(
        self, model: RRDBNet, dtype: torch.dtype, image: np.ndarray, canvas: np.ndarray, block: StagedTile
    ) -> bool:
        """Run one trunk tile and its tail tiles into `canvas`; False if a half-precision value overflowed."""
        check = dtype != torch.float32
        u, s = self.config.unshuffle, self.config.scale
        outer = block.trunk.window
        feat = model.trunk(self._input(image[outer.slices()], dtype))
        if check and not bool(torch.isfinite(feat).all()):
            return False
        for t in block.tails:
            w = t.window.relative_to(outer)
            # Tail windows start on multiples of u; only one ending at the image edge can end between two.
            out = model.tail(feat[:, :, w.top // u: -(-w.bottom // u), w.left // u: -(-w.right // u)])
            if check and not bool(torch.isfinite(out).all()):
                return False
            crop = t.output_crop(s)
            canvas[t.core.scaled(s).slices()] = _to_host(out[0, :, crop.top:crop.bottom, crop.left:crop.right],
                                                         canvas.dtype)
        return True


def _to_host(out: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """C×H×W model output → H×W×3 in `dtype` (integers scaled to their range), converted on the device so less
    crosses the bus."""
    out = out.permute(1, 2, 0).float().clamp(0, 1)
    if np.issubdtype(dtype, np.integer):
        # Same rounding as tiling.to_canvas_dtype: round half to even of value × max, in float32.
        out = (out * np.iinfo(dtype).max).round_().to(torch.int32)
    host = out.cpu().numpy().astype(dtype, copy=False)
    return np.repeat(host, 3, axis=2) if host.shape[2] == 1 else host


@contextmanager
def _oom_as_tile_too_large() -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise TileTooLarge from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise TileTooLarge from None
        raise


def with_tta(model: Model) -> Model:
    """Self-ensemble: the mean over the 8 flips and 90° rotations of each tile, mapped back (about 8× slower)."""

    def run(tile: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for turns in range(4):
            for flip in (False, True):
                x = np.rot90(tile, turns)
                x = x[:, ::-1] if flip else x
                y = model(np.ascontiguousarray(x))
                y = y[:, ::-1] if flip else y
                y = np.rot90(y, -turns)
                total = y.astype(np.float32) if total is None else total + y
        assert total is not None
        return total / 8

    return run
