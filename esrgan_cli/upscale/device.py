"""Where the model runs: device and precision choice, and the memory a tile may take there."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from esrgan_cli.errors import DeviceError

Precision = Literal["auto", "fp32", "fp16", "bf16"]
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
