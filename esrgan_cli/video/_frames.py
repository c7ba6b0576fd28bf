"""Frames between PyAV and the model: YUV (or whatever the decoder gives) to RGB arrays and back, with the source's
own colour matrix and range both ways, so the picture round-trips apart from what the model does to it."""

from __future__ import annotations

from typing import Any

import numpy as np

from esrgan_cli.video.probe import Colour

_FULL = 2  # FFmpeg's AVCOL_RANGE_JPEG: RGB is full range


def rgb_format(bits: int) -> str:
    """PyAV's packed RGB format for frames of `bits` per sample: 8 → uint8, more → uint16."""
    return "rgb24" if bits <= 8 else "rgb48le"


def to_rgb(frame: Any, colour: Colour, bits: int) -> np.ndarray:
    """A decoded frame → H×W×3 uint8 (8 bits) or uint16 (more), converted with the source's matrix and range."""
    return np.ascontiguousarray(frame.to_ndarray(
        format=rgb_format(bits), src_colorspace=colour.sws_matrix, src_color_range=colour.range,
        dst_color_range=_FULL))


def from_rgb(av: Any, rgb: np.ndarray, pix_fmt: str, colour: Colour) -> Any:
    """H×W×3 uint8/uint16 → a frame in `pix_fmt` with the same matrix and range, tagged with the full description."""
    if rgb.dtype == np.uint16 and rgb.dtype.byteorder == ">":
        rgb = rgb.astype("<u2")
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24" if rgb.dtype == np.uint8 else "rgb48le")
    out = frame.reformat(format=pix_fmt, dst_colorspace=colour.sws_matrix, src_color_range=_FULL,
                         dst_color_range=colour.range)
    out.colorspace = colour.matrix
    out.color_range = colour.range
    out.color_primaries = colour.primaries
    out.color_trc = colour.transfer
    return out
