"""Two artefact figures of an upscaled image, plain formulas with no learned weights, numpy only.

**Grid share**: the share of the fine-detail energy of an image that repeats with the input pixel grid, i.e. with a
period of `scale` output pixels (a faint cross-hatch or checkerboard at the scale of one input pixel raises it; a
real photo has little):

1. Y = BT.601 luma of the image (0..255 scale), border already cropped by the caller.
2. D = Y − G(Y): the fine-detail residual, G a Gaussian blur with σ = 1 pixel (7 taps, edges reflected).
3. P(u, v) = |DFT₂(D · w)|², w the 2-D periodic Hann window, w(y, x) = h(y)·h(x) with h(k) = ½ − ½·cos(2πk/n)
   (so the image's edges make no spectral lines).
4. grid bins: every (u, v) within `GRID_TOLERANCE` bins (cyclically) of (i·H/s, j·W/s) for i, j = 0..s−1, rounded to
   the nearest bin, except (i, j) = (0, 0): the frequencies a pattern repeating every s pixels puts its energy at.
5. grid share = Σ P over the grid bins / Σ P over every bin but DC (u, v) = (0, 0).

**Chroma error**: the colour difference to the HR image in the CIELAB a*b* plane, per pixel
ΔC = √((a*₁ − a*₂)² + (b*₁ − b*₂)²) (sRGB → linear → XYZ → L*a*b*, D65 white), summarised as the RMS over the pixels
and the 99th percentile (linear interpolation): colour fringes and halos are local, so the tail shows them.
"""

from __future__ import annotations

import numpy as np

from esrgan_cli.eval._metrics import y_channel

GRID_TOLERANCE = 1
"""Bins on each side of a grid frequency that count as the peak (the Hann window spreads a tone over ±1 bin)."""

_BLUR_SIGMA = 1.0

# sRGB (IEC 61966-2-1) linear RGB → XYZ, and the D65 white point, as CIE and most colour libraries use them.
_RGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])
_D65 = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L*, a*, b*) of an H×W×3 sRGB image in 0..255 (D65 white), as float64 H×W×3."""
    c = np.asarray(rgb, dtype=np.float64)[..., :3] / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _D65
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def chroma_error(sr: np.ndarray, hr: np.ndarray) -> tuple[float, float]:
    """(RMS, 99th percentile) of the per-pixel a*b* distance between two same-size sRGB images in 0..255."""
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"images differ in size: {sr.shape[:2]} and {hr.shape[:2]}")
    a, b = srgb_to_lab(_rgb(sr)), srgb_to_lab(_rgb(hr))
    delta = np.hypot(a[..., 1] - b[..., 1], a[..., 2] - b[..., 2])
    return float(np.sqrt(np.mean(delta * delta))), float(np.percentile(delta, 99))


def _rgb(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image)
    return np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x


def _blur(y: np.ndarray) -> np.ndarray:
    radius = int(3 * _BLUR_SIGMA)
    taps = np.exp(-((np.arange(-radius, radius + 1)) ** 2) / (2 * _BLUR_SIGMA**2))
    taps /= taps.sum()
    h, w = y.shape
    p = np.pad(y, radius, mode="reflect" if min(h, w) > radius else "edge")
    rows = sum(t * p[i:i + h] for i, t in enumerate(taps))
    return np.asarray(sum(t * rows[:, i:i + w] for i, t in enumerate(taps)))


def _hann(n: int) -> np.ndarray:
    """The periodic Hann window, 0.5 − 0.5·cos(2πk/n): a tone on a DFT bin stays within ±1 bin."""
    return np.asarray(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n))


def _grid_mask(h: int, w: int, scale: int) -> np.ndarray:
    """True at the DFT bins within GRID_TOLERANCE of a multiple of 1/scale cycles per pixel, DC's peak aside."""
    def near(n: int) -> np.ndarray:
        """Per bin index along one axis: which multiple of n/scale it is within tolerance of (-1: none)."""
        which = np.full(n, -1)
        for i in range(scale - 1, -1, -1):  # i = 0 last, so a bin near both 0 and another peak counts as 0
            centre = round(i * n / scale)
            for d in range(-GRID_TOLERANCE, GRID_TOLERANCE + 1):
                which[(centre + d) % n] = i
        return which

    rows, cols = near(h)[:, None], near(w)[None, :]
    return (rows >= 0) & (cols >= 0) & ~((rows == 0) & (cols == 0))


def grid_share(image: np.ndarray, scale: int) -> float:
    """The share (0..1) of the fine-detail energy of an sRGB (H×W×3) or gray (H×W) image, 0..255, that lies at the
    frequencies of a pattern repeating every `scale` pixels (see the module's docstring for the formula)."""
    if scale < 2:
        return 0.0  # no input grid finer than the output's own pixels
    y = y_channel(image)
    h, w = y.shape
    if min(h, w) < 2 * scale:
        raise ValueError(f"the grid share needs at least {2 * scale}×{2 * scale} pixels, got {w}×{h}")
    detail = (y - _blur(y)) * np.outer(_hann(h), _hann(w))
    if not np.any(np.abs(detail) > 1e-9):
        return 0.0  # no fine detail at all (a flat image): float rounding, not a pattern
    power = np.abs(np.fft.fft2(detail)) ** 2
    power[0, 0] = 0.0
    total = float(power.sum())
    return 0.0 if total == 0 else float(power[_grid_mask(h, w, scale)].sum()) / total
