"""Pillow-level helpers for the page: an upload's header checked before it is kept, and one crop before and after
the model (`Upscaler.upscale`), as PNG data URLs for the page to show."""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from esrgan_cli.errors import EsrganError, ImageReadError
from esrgan_cli.upscale.pipeline import UpscaleOptions, header_check

if TYPE_CHECKING:
    from esrgan_cli.upscale.upscaler import Upscaler

PREVIEW_MAX = 256  # input pixels on a side of a preview crop


class _Refused(EsrganError):
    pass


def probe_upload(path: Path, name: str, max_output_pixels: int) -> tuple[int, int, int]:
    """(width, height, frames) from the file's header, refused with one line naming `name` when Pillow cannot
    read it or a ×4 upscale of its first frame would pass the output limit. No pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
                frames = int(getattr(im, "n_frames", 1) or 1)
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image (no format esrgan reads recognises it)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{name}: too large to decode safely ({e})".splitlines()[0]) from None
    except Exception as e:  # whatever a decoder raises on a damaged header
        raise ImageReadError(f"{name}: cannot read ({type(e).__name__}: {e})".splitlines()[0]) from None
    try:
        header_check(4, UpscaleOptions(max_output_pixels=max_output_pixels))(width, height, 1)
    except EsrganError as e:
        line = f"{name}: {e}".replace("--max-output-pixels", "esrgan serve --max-output-pixels")
        raise ImageReadError(line) from None
    return width, height, frames


@dataclass(frozen=True)
class Crop:
    left: int
    top: int
    size: int

    @classmethod
    def from_request(cls, data: dict[str, Any], width: int, height: int) -> Crop:
        """A square of `size` input pixels centred on (x, y), moved inside the image."""
        try:
            x, y = float(data.get("x", width / 2)), float(data.get("y", height / 2))
            size = int(data.get("size", 128))
        except (TypeError, ValueError):
            raise _Refused("preview: x, y and size must be numbers") from None
        size = max(16, min(size, PREVIEW_MAX, width, height)) if min(width, height) >= 16 else min(width, height)
        left = int(min(max(round(x - size / 2), 0), width - size))
        top = int(min(max(round(y - size / 2), 0), height - size))
        return cls(left, top, size)


def preview_crop(path: Path, crop: Crop, upscaler: Upscaler, tile: int | None) -> dict[str, str]:
    """The crop (EXIF orientation applied, as the page shows the file) before and after the model."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)
                part = image.crop((crop.left, crop.top, crop.left + crop.size, crop.top + crop.size))
                part.load()
    except Exception as e:
        raise ImageReadError(f"{path}: cannot read ({type(e).__name__}: {e})".splitlines()[0]) from None
    if part.mode == "P":
        part = part.convert("RGBA" if "transparency" in part.info else "RGB")
    after = upscaler.upscale(part, tile=tile)
    return {"before": _data_url(part), "after": _data_url(after),
            "box": f"{crop.left},{crop.top},{crop.size}", "scale": str(upscaler.scale)}


def _data_url(image: Image.Image) -> str:
    """PNG for the page's eyes only (8-bit RGB or RGBA): what a browser shows the same everywhere."""
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit or float grey: scaled, not clipped
        import numpy as np

        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I") else 1.0
        image = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8))
    shown = image.convert("RGBA") if image.mode not in ("RGB", "RGBA") else image
    buffer = io.BytesIO()
    shown.save(buffer, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def viewable_png(path: Path) -> bytes:
    """An output file as an 8-bit PNG for the page's slider (browsers show no TIFF); its first frame."""
    with Image.open(path) as image:
        image.load()
        return base64.b64decode(_data_url(image).split(",", 1)[1])
