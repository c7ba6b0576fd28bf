"""Real-ESRGAN's high-order degradation model (Wang et al., ICCV-W 2021, §3), made on the fly from HR patches.

Twice: blur (Gaussian, generalized Gaussian or plateau kernels, iso- or anisotropic, or a sinc filter), a random
resize (up, down or keep; area, bilinear or bicubic), Gaussian or Poisson noise (colour or gray), JPEG. Then the
resize to LR size with a final sinc filter, before or after the last JPEG (either order, at random).

Randomness comes in two parts, both pure functions of the run's seed (a resumed run repeats them exactly):
- per image, from (seed, sample number): kernels, noise kind, strength and values, JPEG qualities. They are drawn by
  the data loader (`draw_sample`, a few dozen numbers) and applied on the training device;
- per batch, from (seed, iteration): the resize factors and modes and the order of the last steps, as in
  Real-ESRGAN (a batch is one tensor, so its images share a size at each step).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from esrgan_cli.degrade._jpeg import jpeg
from esrgan_cli.degrade.kernels import (
    GAUSSIAN,
    GENERALIZED,
    PLATEAU,
    blur_kernels,
    filter_each,
    identity_kernels,
    sinc_kernels,
)

KERNEL_NAMES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
SINC = 3  # the kind number of a sinc filter in the draws (after GAUSSIAN, GENERALIZED, PLATEAU)
# Independent random streams: the patch crop uses (seed, k) itself (data.py).
_SAMPLE_STREAM, _BATCH_STREAM = 0x6465, 0x6261
Draws = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class DegradationStage:
    """One of the two rounds. Ranges are (low, high); noise sigma is in 8-bit levels."""

    blur_prob: float = 1.0
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # in KERNEL_NAMES order
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape
    betap: tuple[float, float] = (1.0, 2.0)  # plateau shape
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson noise
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        for name, count in (("kernel_probs", len(KERNEL_NAMES)), ("resize_probs", 3)):
            probs = getattr(self, name)
            if len(probs) != count or min(probs) < 0 or not math.isclose(sum(probs), 1, abs_tol=1e-6):
                raise ValueError(f"{name} must be {count} probabilities that sum to 1, got {list(probs)}")
        for name in ("blur_sigma", "betag", "betap", "resize_range", "noise_sigma", "poisson_scale", "jpeg_quality"):
            low, high = _pair(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got {[low, high]}")
        if not self.resize_range[0] <= 1 <= self.resize_range[1]:
            raise ValueError(f"resize_range must contain 1 (down to its low end, up to its high), "
                             f"got {list(self.resize_range)}")
        if self.jpeg_quality[1] > 100 or any(int(q) != q for q in self.jpeg_quality):
            raise ValueError(f"jpeg_quality must be integers in 1..100, got {list(self.jpeg_quality)}")


def _pair(obj: object, name: str) -> tuple[float, float]:
    value = getattr(obj, name)
    if len(value) != 2:
        raise ValueError(f"{name} must be a range (low, high), got {list(value)}")
    return value[0], value[1]


SECOND_STAGE = DegradationStage(blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3),
                                resize_range=(0.3, 1.2), noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))


@dataclass(frozen=True)
class DegradationConfig:
    """The published defaults of Real-ESRGAN x4plus (options/train_realesrgan_x4plus.yml)."""

    first: DegradationStage = field(default_factory=DegradationStage)
    second: DegradationStage = field(default_factory=lambda: SECOND_STAGE)
    kernel_sizes: tuple[int, int] = (7, 21)  # odd sides from .. to, for blur and sinc kernels alike
    final_sinc_prob: float = 0.8

    def __post_init__(self) -> None:
        low, high = _pair(self, "kernel_sizes")
        if not (1 <= low <= high and low % 2 == 1 and high % 2 == 1):
            raise ValueError(f"kernel_sizes must be odd sizes (from, to), got {[low, high]}")
        if not 0 <= self.final_sinc_prob <= 1:
            raise ValueError(f"final_sinc_prob must be a probability, got {self.final_sinc_prob}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """A hash of every setting: what a cache of degraded samples is keyed by."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def overridden(self, changes: Mapping[str, Any]) -> DegradationConfig:
        """This configuration with `changes` (a JSON object: any fields, `first`/`second` nested) applied; a
        ValueError names an unknown key or a bad value."""
        top = _checked(changes, DegradationConfig, "")
        for name in ("first", "second"):
            if name in top:
                top[name] = replace(getattr(self, name), **_checked(top[name], DegradationStage, f"{name}."))
        return replace(self, **top)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DegradationConfig:
        return cls().overridden(data)


def _checked(data: object, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'the degradation settings'} must be a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown degradation setting {where}{unknown[0]} (known: {', '.join(sorted(known))})")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


# -- the random draws ----------------------------------------------------------------------------------------------


def _uniform_about_one(rng: np.random.Generator, low: float, high: float) -> float:
    """A shape exponent: below or above 1 with even odds when the range spans 1 (as Real-ESRGAN draws β)."""
    if low < 1 < high:
        return float(rng.uniform(low, 1) if rng.random() < 0.5 else rng.uniform(1, high))
    return float(rng.uniform(low, high))


def _sinc_cutoff(rng: np.random.Generator, size: int, final: bool) -> float:
    # Real-ESRGAN's ranges: a small kernel cannot hold a low cutoff's wide ripples.
    return float(rng.uniform(math.pi / 3 if final or size < 13 else math.pi / 5, math.pi))


def _draw_stage(rng: np.random.Generator, stage: DegradationStage, sizes: list[int], s: str) -> dict[str, Any]:
    d: dict[str, Any] = {f"blur{s}": rng.random() < stage.blur_prob}
    size = int(rng.choice(sizes))
    sigma, theta, beta, omega, kind = (1.0, 1.0), 0.0, 1.0, math.pi, SINC
    if rng.random() < stage.sinc_prob:
        omega = _sinc_cutoff(rng, size, final=False)
    else:
        name = KERNEL_NAMES[int(rng.choice(len(KERNEL_NAMES), p=stage.kernel_probs))]
        kind = GENERALIZED if name.startswith("generalized") else PLATEAU if name.startswith("plateau") else GAUSSIAN
        sx = float(rng.uniform(*stage.blur_sigma))
        if name.endswith("aniso"):
            sigma, theta = (sx, float(rng.uniform(*stage.blur_sigma))), float(rng.uniform(-math.pi, math.pi))
        else:
            sigma = (sx, sx)
        if kind != GAUSSIAN:
            beta = _uniform_about_one(rng, *(stage.betag if kind == GENERALIZED else stage.betap))
    d.update({f"kind{s}": kind, f"size{s}": size, f"sigma{s}": sigma, f"theta{s}": theta, f"beta{s}": beta,
              f"omega{s}": omega})
    gaussian = rng.random() < stage.gaussian_noise_prob
    d[f"gaussian{s}"] = gaussian
    d[f"noise{s}"] = float(rng.uniform(*(stage.noise_sigma if gaussian else stage.poisson_scale)))
    d[f"gray{s}"] = rng.random() < stage.gray_noise_prob
    d[f"seed{s}"] = int(rng.integers(1 << 62))
    d[f"quality{s}"] = int(rng.integers(stage.jpeg_quality[0], stage.jpeg_quality[1] + 1))
    return d


def draw_sample(config: DegradationConfig, seed: int, k: int) -> dict[str, torch.Tensor]:
    """Sample k's own random choices, as tensors the data loader can batch."""
    rng = np.random.default_rng([seed, k, _SAMPLE_STREAM])
    sizes = list(range(config.kernel_sizes[0], config.kernel_sizes[1] + 1, 2))
    d = {**_draw_stage(rng, config.first, sizes, "1"), **_draw_stage(rng, config.second, sizes, "2")}
    d["sinc"] = rng.random() < config.final_sinc_prob
    d["sinc_size"] = int(rng.choice(sizes))
    d["sinc_omega"] = _sinc_cutoff(rng, d["sinc_size"], final=True)
    return {key: torch.tensor(value) for key, value in d.items()}


@dataclass(frozen=True)
class BatchDraw:
    """The choices a batch shares: the resize factor and mode of each round, then the final resize's mode and
    whether the last JPEG comes after it."""

    scale1: float
    mode1: str
    scale2: float
    mode2: str
    final_mode: str
    jpeg_last: bool


def _resize_factor(rng: np.random.Generator, stage: DegradationStage) -> float:
    way = int(rng.choice(3, p=stage.resize_probs))
    low, high = stage.resize_range
    return float(rng.uniform(1, high)) if way == 0 else float(rng.uniform(low, 1)) if way == 1 else 1.0


def draw_batch(config: DegradationConfig, seed: int, iteration: int) -> BatchDraw:
    rng = np.random.default_rng([seed, iteration, _BATCH_STREAM])
    scale1, mode1 = _resize_factor(rng, config.first), RESIZE_MODES[int(rng.integers(3))]
    scale2, mode2 = _resize_factor(rng, config.second), RESIZE_MODES[int(rng.integers(3))]
    jpeg_last = bool(rng.random() < 0.5)
    return BatchDraw(scale1, mode1, scale2, mode2, RESIZE_MODES[int(rng.integers(3))], jpeg_last)


# -- applying them ----------------------------------------------------------------------------------------------


def _grid(sizes: torch.Tensor, applied: torch.Tensor) -> int:
    """The smallest square that holds the batch's kernels (those applied): no work on rings of zeros."""
    used = sizes[applied.bool()]
    return int(used.max()) if len(used) else 1


def stage_kernels(draws: Draws, s: str, device: torch.device) -> torch.Tensor:
    """The blur of round `s` ("1" or "2") for each image: its kernel, or the identity where it has none."""
    grid = _grid(draws[f"size{s}"], draws[f"blur{s}"])
    d = {k: v.to(device) for k, v in draws.items() if k.endswith(s)}
    blur = blur_kernels(d[f"kind{s}"].clamp(max=PLATEAU), d[f"sigma{s}"], d[f"theta{s}"], d[f"beta{s}"],
                        d[f"size{s}"], grid)
    sinc = sinc_kernels(d[f"omega{s}"], d[f"size{s}"], grid)
    k = torch.where((d[f"kind{s}"] == SINC)[:, None, None], sinc, blur)
    return torch.where(d[f"blur{s}"][:, None, None], k, identity_kernels(len(k), grid, device))


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of N×3×H×W, N×1×H×W."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x[:, :1]


def add_noise(x: torch.Tensor, gaussian: torch.Tensor, level: torch.Tensor, gray: torch.Tensor,
              seeds: torch.Tensor) -> torch.Tensor:
    """Each image with its own noise, clipped to [0, 1]: Gaussian of sigma `level` (8-bit levels), or Poisson
    (shot noise, counting 255 photons at full scale) times `level`. Gray noise is one plane added to every channel.
    The values come from a generator seeded by the image's own seed, on the image's device."""
    out = []
    for i in range(len(x)):
        img = x[i : i + 1]
        g = torch.Generator(device=x.device).manual_seed(int(seeds[i]))
        source = luma(img) if bool(gray[i]) else img  # gray noise: one plane, from the luma's photon counts
        if bool(gaussian[i]):
            noise = torch.randn(source.shape, generator=g, device=x.device) * (float(level[i]) / 255)
        else:
            counts = (source.clamp(0, 1) * 255).round()
            noise = (torch.poisson(counts, generator=g) - counts) / 255 * float(level[i])
        out.append(img + noise)
    return torch.cat(out).clamp(0, 1)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


@torch.no_grad()
def degrade(hr: torch.Tensor, draws: Draws, batch: BatchDraw, scale: int) -> torch.Tensor:
    """HR patches (B×3×H×W in [0, 1], on the training device) → their LR (B×3×H/scale×W/scale), rounded to 8-bit
    levels, made with the per-image `draws` (from `draw_sample`) and the batch's shared `batch` choices."""
    b, _, h, w = hr.shape
    if h % scale or w % scale:
        raise ValueError(f"the HR patches ({h}×{w}) must be multiples of the scale {scale}")
    dev = hr.device
    q = {s: draws[f"quality{s}"].to(dev) for s in ("1", "2")}
    x = filter_each(hr.float(), stage_kernels(draws, "1", dev))
    x = _resize(x, (int(h * batch.scale1), int(w * batch.scale1)), batch.mode1)
    x = add_noise(x, draws["gaussian1"], draws["noise1"], draws["gray1"], draws["seed1"])
    x = jpeg(x, q["1"])
    x = filter_each(x, stage_kernels(draws, "2", dev))
    x = _resize(x, (int(h / scale * batch.scale2), int(w / scale * batch.scale2)), batch.mode2)
    x = add_noise(x, draws["gaussian2"], draws["noise2"], draws["gray2"], draws["seed2"])
    grid = _grid(draws["sinc_size"], draws["sinc"])
    sinc = sinc_kernels(draws["sinc_omega"].to(dev), draws["sinc_size"].to(dev), grid)
    sinc = torch.where(draws["sinc"].to(dev)[:, None, None], sinc, identity_kernels(b, grid, dev))
    if batch.jpeg_last:
        x = jpeg(filter_each(_resize(x, (h // scale, w // scale), batch.final_mode), sinc).clamp(0, 1), q["2"])
    else:
        x = filter_each(_resize(jpeg(x, q["2"]), (h // scale, w // scale), batch.final_mode), sinc)
    return (x.clamp(0, 1) * 255).round() / 255
