"""The public `Upscaler`: the engine with images in and out, as `esrgan_cli.load_model` returns it.

A Pillow image keeps its mode, alpha, 16-bit depth, ICC profile and EXIF; a numpy array keeps its type and channels.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from PIL import Image

from esrgan_cli.defaults import DEFAULT_OVERLAP
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
        self, image: ImageT, *, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
        outscale: float | None = None, tta: bool = False,
    ) -> ImageT:
        """Upscale a `PIL.Image` (mode, alpha, 16-bit depth, ICC profile and EXIF kept) or an H×W or H×W×C numpy
        array (uint8, uint16, or float in [0, 1]; the same type and channels come back).

        `tile`: None picks tiles from the memory budget, 0 runs whole; `overlap`: context around trunk tiles
        (default 48); `outscale`: a final scale other than the model's, by Lanczos; `tta`: 8-fold self-ensemble."""
        options = UpscaleOptions(tile=tile, overlap=overlap, outscale=outscale, tta=tta, max_output_pixels=0)
        return upscale_any(self, image, options)


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
        return _resize_array(out, size) if (out.shape[1], out.shape[0]) != size else out
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
        if not np.isfinite(array).all():
            raise ValueError("the image array holds NaN or infinite values")
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
