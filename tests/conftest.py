"""Shared fixtures: tiny seeded models, weight files in every layout, and the ../shared data when present."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from esrgan_cli.arch import RRDBConfig, RRDBNet, init_weights
from esrgan_cli.metrics import psnr as metrics_psnr
from esrgan_cli.weights import save_safetensors

ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("ESRGAN_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "weights").is_dir():
        pytest.skip(f"shared data not found at {path} (set ESRGAN_SHARED)")
    return path


def tiny_model(config: RRDBConfig | None = None, seed: int = 0) -> RRDBNet:
    config = config or RRDBConfig(num_feat=8, num_block=1, num_grow=4)
    torch.manual_seed(seed)
    model = RRDBNet(config)
    # Default (larger) init so outputs vary visibly across the image; the paper's
    # x0.1 scaling makes tiny random nets nearly constant.
    init_weights(model, scale=1.0, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.05)
    return model.eval()


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    """A 1-block, 8-feature x4 model saved as our own safetensors."""
    model = tiny_model()
    path = tmp_path / "tiny.safetensors"
    save_safetensors(model.state_dict(), model.config, path)
    return path


def to_oldest_layout(sd: dict[str, torch.Tensor], config: RRDBConfig) -> dict[str, torch.Tensor]:
    """The inverse of the loader's mapping, written independently from the old ESRGAN architecture."""
    out = {}
    n_up = config.upsample_stages
    top = {"conv_first": 0, "conv_hr": 3 * n_up + 2, "conv_last": 3 * n_up + 4}
    top.update({f"conv_up{i}": 3 * i for i in range(1, n_up + 1)})
    for key, value in sd.items():
        if m := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        elif key.startswith("conv_body."):
            out[f"model.1.sub.{config.num_block}.{key.split('.')[1]}"] = value
        else:
            name, kind = key.split(".")
            out[f"model.{top[name]}.{kind}"] = value
    return out


def to_esrgan_repo_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"conv_body": "trunk_conv", "conv_hr": "HRconv", "conv_first": "conv_first", "conv_last": "conv_last"}
    out = {}
    for key, value in sd.items():
        if m := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            out[f"RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}.{m[4]}"] = value
        else:
            name, kind = key.split(".")
            name = names.get(name) or name.replace("conv_up", "upconv")
            out[f"{name}.{kind}"] = value
    return out


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-plus-noise RGB float image, so models see structure and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], axis=2) * 0.3 + 0.5
    return np.clip(base + rng.normal(0, 0.1, (h, w, 3)), 0, 1).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR of float images in [0, 1] by default."""
    return metrics_psnr(a, b, peak)


Forward = Callable[[torch.Tensor], torch.Tensor]


def out_of_memory_above(fn: Forward, pixels: int) -> Forward:
    """`fn`, but raising CUDA's out-of-memory error for inputs of more than `pixels` pixels."""

    def limited(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] * x.shape[-2] > pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fn(x)

    return limited


def run_upscaler(up: Any, rgb: np.ndarray, tile: int | None, overlap: int, dtype: type = np.float32,
                 tta: bool = False) -> tuple[np.ndarray, int]:
    """An H×W×3 float image through `Upscaler.upscale_into`: the canvas in `dtype` and the blocks run."""
    canvas = np.empty((rgb.shape[0] * up.scale, rgb.shape[1] * up.scale, up.channels), dtype)
    return canvas, up.upscale_into(rgb, canvas, tile, overlap, tta=tta)
