"""Pixel values between types: unit floats to integer canvases, rounded one way everywhere, and luma."""

from __future__ import annotations

import numpy as np

from esrgan_cli.defaults import LUMA_WEIGHTS

LUMA = np.array(LUMA_WEIGHTS, dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 (or more channels: the first three are colour) → H×W BT.601 luma in float32, in the input's scale."""
    return rgb[..., :3].astype(np.float32, copy=False) @ LUMA


def rounded(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values already in an integer type's range → that type: round half to even, then clip."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(values), 0, top).astype(dtype)


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Floats in [0, 1] → `dtype`: integers are scaled to their range and rounded, floats clipped."""
    if np.issubdtype(dtype, np.integer):
        return rounded(values * np.iinfo(dtype).max, dtype)
    return np.clip(values, 0.0, 1.0).astype(dtype, copy=False)
