"""The public `Upscaler`: the engine with images in and out, as `esrgan_cli.load_model` returns it.

A Pillow image keeps its mode, alpha, 16-bit depth, ICC profile and EXIF; a numpy array keeps its type and channels.
Arguments are checked as the command line checks its options, with a one-line `TypeError` or `ValueError`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image

from esrgan_cli.defaults import DEFAULT_OVERLAP, MIN_TILE
from esrgan_cli.image.convert import rounded, to_dtype
from esrgan_cli.image.decode import LoadedImage, from_pil
from esrgan_cli.image.encode import to_gray
from esrgan_cli.upscale.engine import Engine
from esrgan_cli.upscale.pipeline import (
    Planes,
    UpscaleOptions,
    check_size,
    final_size,
    unit,
    upscale_image,
    upscale_planes,
)

ImageT = TypeVar("ImageT", Image.Image, np.ndarray)


class Upscaler(Engine):
    """A model on its device. `upscale` takes and returns images (PIL or numpy); `upscale_into` fills a canvas."""

    def upscale(
        self, image: ImageT, *, tile: int | Literal["auto"] | None = None, overlap: int = DEFAULT_OVERLAP,
        outscale: float | None = None, tta: bool = False,
    ) -> ImageT:
        """Upscale a `PIL.Image` (mode, alpha, 16-bit depth, ICC profile and EXIF kept) or an H×W or H×W×C numpy
        array (uint8, uint16, or float in [0, 1]; the same type, float16/32/64 included, and channels come back).

        `tile`: None or "auto" picks tiles from the memory budget, 0 runs whole, else at least 16; `overlap`:
        context around trunk tiles, 0 or more (default 48); `outscale`: a final scale above 0 other than the
        model's, by Lanczos; `tta`: 8-fold self-ensemble. Anything else is a `TypeError` or `ValueError`."""
        return upscale_any(self, image, _checked_options(tile, overlap, outscale, tta))


def _checked_options(tile: object, overlap: object, outscale: object, tta: object) -> UpscaleOptions:
    """The command line's rules for --tile, --overlap and --outscale (and a bool for --tta), for callers that have
    no click to enforce them: a wrong type is a `TypeError`, a wrong value a `ValueError`, each in one line."""
    if isinstance(tile, str) and tile.lower() == "auto":
        tile = None
    if tile is not None:
        tile = _whole(tile, "tile", f"None, 'auto', 0 (whole image) or an int of at least {MIN_TILE}")
        if tile != 0 and tile < MIN_TILE:
            raise ValueError(f"tile={tile} is too small: use 0 (whole image), 'auto', or at least {MIN_TILE}")
    overlap = _whole(overlap, "overlap", "an int of 0 or more")
    if overlap < 0:
        raise ValueError(f"overlap={overlap} is negative: use 0 or more pixels of context around each tile")
    if outscale is not None:
        if isinstance(outscale, (bool, np.bool_)) or not isinstance(outscale, (int, float, np.integer, np.floating)):
            raise TypeError(f"outscale must be None or a number above 0, not {type(outscale).__name__}")
        outscale = float(outscale)
        if not math.isfinite(outscale) or outscale <= 0:
            raise ValueError(f"outscale={outscale:g} must be a finite number above 0 (2 doubles the size)")
    if not isinstance(tta, (bool, np.bool_)):
        raise TypeError(f"tta must be True or False, not {type(tta).__name__}")
    return UpscaleOptions(tile=tile, overlap=overlap, outscale=outscale, tta=bool(tta), max_output_pixels=0)


def _whole(value: object, name: str, wanted: str) -> int:
    # bool is an int to Python, but tile=True is a mistake, not 1; numpy integers are fine.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {wanted}, not {type(value).__name__} {value!r}")
    return int(value)


def upscale_any(upscaler: Upscaler, image: ImageT, options: UpscaleOptions) -> ImageT:
    """The Python API's upscale: a Pillow image keeps its mode, alpha, 16-bit depth, ICC profile and EXIF; a numpy
    array keeps its type and channels."""
    if isinstance(image, Image.Image):
        loaded = from_pil(image)
        # upscale_image checks the output size. TIFF holds everything a Pillow image can carry here: alpha,
        # 16-bit grayscale and CMYK.
        result = upscale_image(loaded, upscaler, "TIFF", options).image
        if loaded.icc_profile:
            result.info["icc_profile"] = loaded.icc_profile
        if loaded.exif:
            result.info["exif"] = loaded.exif
        return result
    if isinstance(image, np.ndarray):
        loaded, dtype = _from_array(image)
        check_size(loaded, upscaler.scale, options)
        planes = upscale_planes(loaded, upscaler, options, dtype)
        out = _to_array(planes, loaded.grayscale, image.ndim == 2)
        size = final_size(loaded.width, loaded.height, upscaler.scale, options.outscale)
        out = _resize_array(out, size) if (out.shape[1], out.shape[0]) != size else out
        # Floats are computed in float32 (see _from_array); the caller gets the type it passed.
        return out.astype(image.dtype, copy=False)
    raise TypeError(f"expected a PIL.Image.Image or a numpy array, got {type(image).__name__}")


def _from_array(array: np.ndarray) -> tuple[LoadedImage, np.dtype[Any]]:
    """H×W or H×W×C (C: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA) → planes, and the canvas type to give back."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"expected an H×W or H×W×C image array with C in 1..4, got shape {array.shape}")
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        dtype = array.dtype
    elif np.issubdtype(array.dtype, np.floating):
        _check_unit_range(array)
        # float32 is what the engine computes in; float16 would lose precision in the canvas, float64 gains none.
        dtype = np.dtype(np.float32)
    else:
        raise TypeError(f"unsupported image array type {array.dtype} (use uint8, uint16 or float in [0, 1])")
    values = unit(array)
    channels = values.shape[2]
    gray = channels <= 2
    rgb = np.repeat(values[..., :1], 3, axis=2) if gray else np.ascontiguousarray(values[..., :3])
    alpha = values[..., -1] if channels in (2, 4) else None
    bits = 16 if array.dtype == np.uint16 else 8
    return LoadedImage(rgb, alpha, gray, bits, False, None, None), dtype


def _check_unit_range(array: np.ndarray) -> None:
    """Refuse a float array that is not an image in [0, 1]: 0..255 or [-1, 1] data would come back white or clipped.

    Values within one step of the type's precision (at least 1e-6) outside [0, 1] are float rounding, common after
    arithmetic (one float16 step above 1 is 1 + 2**-10); they are clipped like before."""
    if not np.isfinite(array).all():
        raise ValueError("the image array holds NaN or infinite values; float images must be finite, in [0, 1]")
    slack = max(1e-6, float(np.finfo(array.dtype).eps))
    low, high = float(array.min()), float(array.max())
    if high > 1 + slack:
        divisor = 255 if high <= 255 + slack else 65535
        raise ValueError(f"float images must be in [0, 1], got values up to {high:g}; divide by {divisor}")
    if low < -slack:
        raise ValueError(f"float images must be in [0, 1], got values down to {low:g}; map [-1, 1] data by (x + 1) / 2")


def _to_array(planes: Planes, grayscale: bool, two_d: bool) -> np.ndarray:
    colour = to_gray(planes.rgb)[..., None] if grayscale else planes.rgb
    if planes.alpha is not None:
        colour = np.concatenate([colour, to_dtype(planes.alpha, colour.dtype)[..., None]], axis=2)
    return colour[..., 0] if two_d else colour


def _resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos to (width, height), plane by plane in float, back to the array's type."""
    planes = array[..., None] if array.ndim == 2 else array
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)) for c in range(planes.shape[2])], axis=2)
    out = rounded(out, array.dtype) if np.issubdtype(array.dtype, np.integer) else to_dtype(out, array.dtype)
    return out[..., 0] if array.ndim == 2 else out
