"""MATLAB-compatible bicubic resizing (`imresize(..., 'bicubic')`, antialiased when shrinking), numpy only.

Super-resolution benchmarks make their low-resolution inputs this way, so training pairs and evaluation must too:
Pillow's bicubic differs (another antialiasing kernel), and a model trained on one degradation scores worse on the
other. The method follows MATLAB's documented algorithm: a cubic kernel with a = -0.5, stretched by 1/scale when
shrinking, pixel centres mapped with u = x/scale + 0.5·(1 - 1/scale), and mirrored borders.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The out_len×in_len float64 matrix that resizes one axis (rows sum to 1)."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    weights = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    # Mirror out-of-range taps back inside (1-based: ..., 2, 1, 1, 2, ..., n, n, n-1, ...).
    period = 2 * in_len
    m = np.mod(idx - 1, period)
    src = np.where(m < in_len, m, period - 1 - m).astype(np.int64)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), src.ravel()), weights.ravel())
    return matrix


def imresize(image: np.ndarray, scale: float | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Resize an H×W or H×W×C image by `scale`, or to `size` = (height, width), as MATLAB does.

    With `scale`, the output is ceil(H·scale)×ceil(W·scale). Like MATLAB, the result has the input's class: a uint8
    image is rounded and clipped to uint8 after each pass (height first), which reproduces the benchmark LR files;
    float images are neither rounded nor clipped.
    """
    h, w = image.shape[:2]
    if size is None:
        if scale is None or scale <= 0:
            raise ValueError("give a positive scale or a size")
        out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
        sh = sw = float(scale)
    else:
        out_h, out_w = size
        sh, sw = out_h / h, out_w / w
    quantize = image.dtype == np.uint8
    out = image.astype(np.float64)
    out = np.tensordot(resize_matrix(h, out_h, sh), out, axes=(1, 0))
    if quantize:
        out = np.clip(np.round(out), 0, 255)
    out = np.tensordot(resize_matrix(w, out_w, sw), out, axes=(1, 1)).swapaxes(0, 1)
    if quantize:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out if image.dtype == np.float64 else out.astype(np.float32)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right so both sides are multiples of `scale` (how benchmark LR images are made)."""
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]
