"""Image-quality figures as the super-resolution literature computes them, numpy only.

PSNR and SSIM are measured on the luma of BT.601 YCbCr (16..235 for 8-bit), on 8-bit images, with `border` pixels
cropped from every side; SSIM uses an 11×11 Gaussian window (σ = 1.5) and K1 = 0.01, K2 = 0.03, as Wang et al. 2004.
"""

from __future__ import annotations

import math

import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """The BT.601 luma of an H×W×3 (or H×W gray) image in 0..255, as float64 in 16..235."""
    x = np.asarray(rgb, dtype=np.float64)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return x[..., :3] @ _Y_WEIGHTS + 16.0


def crop_border(a: np.ndarray, border: int) -> np.ndarray:
    """`a` without `border` pixels on every side, as SR benchmarks score."""
    return a[border:-border, border:-border] if border else a


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two same-shape arrays (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """Y-channel PSNR of two 8-bit-valued RGB images (0..255), `border` pixels cropped."""
    return psnr(crop_border(y_channel(sr), border), crop_border(y_channel(hr), border))


def _gaussian_filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array with a 1-D kernel along both axes."""
    n = len(taps)
    h, w = x.shape
    rows = sum(taps[i] * x[i : h - n + 1 + i] for i in range(n))
    return sum(taps[i] * rows[:, i : w - n + 1 + i] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two 2-D arrays (Gaussian window, 'valid' region only)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(x.shape) < 11:
        raise ValueError(f"SSIM needs at least 11×11 pixels, got {x.shape[1]}×{x.shape[0]}")
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = _gaussian_filter_valid(x, g), _gaussian_filter_valid(y, g)
    sxx = _gaussian_filter_valid(x * x, g) - mx * mx
    syy = _gaussian_filter_valid(y * y, g) - my * my
    sxy = _gaussian_filter_valid(x * y, g) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """Y-channel SSIM of two 8-bit-valued RGB images (0..255), `border` pixels cropped."""
    return ssim(crop_border(y_channel(sr), border), crop_border(y_channel(hr), border))
