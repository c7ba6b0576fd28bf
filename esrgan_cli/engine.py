"""Running an RRDBNet on image tiles: device and precision choice, fp16 safety, memory budget.

`Upscaler` is the tile callback for `tiling.run_tiled`: the image stays in host
memory and only the tile in flight is on the device.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from esrgan_cli.arch import RRDBConfig, RRDBNet
from esrgan_cli.errors import DeviceError, WeightsError
from esrgan_cli.tiling import Model, TileTooLarge
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
    """Peak activation memory of a forward pass, per input pixel.

    The largest tensors are at full output resolution after the last upsampling:
    the upsampled input, the conv output and conv_hr's output, each num_feat
    planes at scale² pixels. Measured peaks on CPU stay under this bound.
    """
    size = torch.finfo(dtype).bits // 8
    hr = 3 * config.num_feat * config.scale**2
    trunk = 4 * (config.num_feat + 4 * config.num_grow) / config.unshuffle**2
    return size * (hr + trunk) * 1.25


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
    """The model on its device, callable on one H×W×C float32 tile."""

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

    def _place(self, model: RRDBNet, dtype: torch.dtype) -> RRDBNet:
        model = model.to(self.placement.device, dtype)
        if self.placement.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        try:
            out = self._forward(self.model, tile, self.placement.dtype)
            if self.placement.dtype != torch.float32 and not bool(torch.isfinite(out).all()):
                # fp16 overflows on some images; redo this tile exactly in fp32.
                self.fp32_retries += 1
                if self._fp32_model is None:
                    self._fp32_model = self._place(build_model(self.weights), torch.float32)
                out = self._forward(self._fp32_model, tile, torch.float32)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise TileTooLarge from None
        except RuntimeError as e:
            if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
                raise TileTooLarge from None
            raise
        out = out.float().clamp(0, 1).squeeze(0).permute(1, 2, 0).cpu().numpy()
        return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out

    @torch.inference_mode()
    def _forward(self, model: RRDBNet, tile: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        if self.config.in_channels == 1:
            tile = tile @ _LUMA
            tile = tile[..., None]
        x = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None]
        x = x.to(self.placement.device, dtype, non_blocking=True)
        h, w = x.shape[-2:]
        u = self.config.unshuffle
        pad_h, pad_w = (-h) % u, (-w) % u
        if pad_h or pad_w:
            # Pixel-unshuffle needs multiples of its factor; BasicSR pads by reflection too.
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        if self.placement.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        s = self.config.scale
        return out[..., : h * s, : w * s]


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
