"""Reading images into float arrays and writing results back, keeping what users care about.

EXIF orientation is applied on read; the ICC profile and EXIF are carried to the
output; alpha is kept as its own plane; grayscale stays grayscale; 16-bit
grayscale stays 16-bit where the output format allows. Writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from esrgan_cli.defaults import FORMATS
from esrgan_cli.errors import ImageWriteError, first_line
from esrgan_cli.files import atomic_write
from esrgan_cli.image.animation import Animation, save_params
from esrgan_cli.image.convert import luma, rounded, to_dtype
from esrgan_cli.image.decode import LoadedImage

SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF", "BMP", "GIF"}
CMYK_FORMATS = {"JPEG", "TIFF"}


def output_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        known = ", ".join(sorted({s.lstrip(".") for s in FORMATS}))
        raise ImageWriteError(f"{path}: unknown output format {Path(path).suffix!r} (use one of: {known})")
    return fmt


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float [0, 1] → 8-bit, rounded."""
    return to_dtype(rgb, np.dtype(np.uint8))


def output_bit_depth(image: LoadedImage, fmt: str) -> int:
    """8, 16 (16-bit grayscale into PNG/TIFF) or 32 (a float image into TIFF)."""
    if image.value_range is not None:
        if fmt != "TIFF":
            lo, hi = image.value_range
            raise ImageWriteError(f"a 32-bit float image (values {lo:g} to {hi:g}) can only be written as TIFF, "
                                  "which keeps that range; use a .tif output")
        return 32
    return 16 if image.bit_depth == 16 and fmt in SIXTEEN_BIT_FORMATS else 8


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 canvas → H×W luma (BT.601), in the canvas's type."""
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for top in range(0, rgb.shape[0], 256):  # in bands, so the float temporary stays small
        band = luma(rgb[top : top + 256])
        out[top : top + 256] = rounded(band, rgb.dtype) if np.issubdtype(rgb.dtype, np.integer) else band
    return out


def resize_alpha(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an H×W alpha plane in [0, 1] to (width, height).

    Bilinear, not Lanczos: a sharper filter rings at opacity steps and leaves a
    faint halo over areas that were fully transparent.
    """
    img = Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


def compose(
    rgb: np.ndarray, alpha: np.ndarray | None, image: LoadedImage, fmt: str, notes: list[str],
    refuse_alpha_loss: bool = False,
) -> Image.Image:
    """Output canvas (uint8, uint16 or float32, H×W×3) + alpha → a Pillow image in the mode the input had.

    Where `fmt` cannot hold the transparency it is dropped with a note, or refused (`refuse_alpha_loss`).
    """
    if image.value_range is not None:
        lo, hi = image.value_range
        return Image.fromarray((to_gray(rgb.astype(np.float32)) * (hi - lo) + lo).astype(np.float32), mode="F")
    if image.grayscale:
        gray = to_gray(rgb)
        if gray.dtype == np.uint16:
            if alpha is None or fmt not in ALPHA_FORMATS:
                _alpha_lost(alpha, fmt, notes, refuse_alpha_loss)
                return Image.fromarray(gray)  # I;16
            notes.append("16-bit grayscale with transparency is written as 8-bit (Pillow has no 16-bit grey + alpha)")
            gray = np.rint(gray / 257.0).astype(np.uint8)
        base = Image.fromarray(gray)
    else:
        base = Image.fromarray(rgb)
    if alpha is not None and fmt in ALPHA_FORMATS:
        a = Image.fromarray(to_dtype(alpha, np.dtype(np.uint8)))
        base = base.convert("LA" if base.mode == "L" else "RGBA")
        base.putalpha(a)
        if fmt == "BMP":
            notes.append("BMP's alpha channel is ignored by most readers; png, webp or tiff keep transparency")
        elif fmt == "GIF" and ((alpha > 0.01) & (alpha < 0.99)).any():
            notes.append("GIF transparency is on or off: partial transparency was rounded")
    else:
        _alpha_lost(alpha, fmt, notes, refuse_alpha_loss)
    if image.cmyk and fmt in CMYK_FORMATS:
        base = base.convert("CMYK")
    return base


def _alpha_lost(alpha: np.ndarray | None, fmt: str, notes: list[str], refuse: bool) -> None:
    if alpha is None:
        return
    if refuse:
        raise ImageWriteError(f"{fmt} has no alpha channel and the image is transparent; write png, webp or tiff, "
                              "or pass --alpha-loss drop")
    notes.append(f"{fmt} has no alpha channel: transparency dropped")


def write_image(
    img: Image.Image, path: Path, fmt: str, source: LoadedImage, quality: int, notes: list[str],
    animation: Animation | None = None,
) -> None:
    """Encode atomically (see atomic.py): a reader never sees half a file. With `animation`, `img` is the first
    of several frames (or pages) and the file gets them all."""
    path = Path(path)
    if os.path.isdir(path):
        raise ImageWriteError(f"{path}: is a directory")
    params: dict[str, object] = {}
    icc = source.icc_profile
    if source.cmyk and img.mode != "CMYK":
        icc = None  # a CMYK profile would mislabel RGB pixels
        notes.append(f"{fmt} cannot hold CMYK: written as RGB without the CMYK colour profile")
    if icc and fmt != "BMP":
        params["icc_profile"] = icc
    if source.exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["exif"] = source.exif
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = quality
    if animation is not None:
        params.update(save_params(animation, fmt))
    with atomic_write(path) as tmp:
        _save(img, tmp, fmt, params, notes, path)


def _save(img: Image.Image, tmp: Path, fmt: str, params: dict[str, object], notes: list[str], path: Path) -> None:
    """Encode; metadata the encoder cannot take (damaged EXIF) is left out with a note. OSError (a full disk)
    goes to atomic_write; any other encoder failure is one ImageWriteError line."""
    try:
        img.save(tmp, format=fmt, **params)
        return
    except OSError:
        raise
    except Exception as e:  # an encoder may raise anything on damaged metadata
        if "exif" not in params and "icc_profile" not in params:
            raise ImageWriteError(f"{path}: cannot encode as {fmt} ({type(e).__name__}: {first_line(e, 160)})") from e
    notes.append("its EXIF or colour profile is damaged and was not copied")
    kept = {k: v for k, v in params.items() if k not in ("exif", "icc_profile")}
    try:
        img.save(tmp, format=fmt, **kept)
    except OSError:
        raise
    except Exception as e:
        raise ImageWriteError(f"{path}: cannot encode as {fmt} ({type(e).__name__}: {first_line(e, 160)})") from e


def contact_sheet(images: list[Image.Image], labels: list[str], gap: int = 8) -> Image.Image:
    """Images side by side on white, each with its label above it, for choosing by eye."""
    from PIL import ImageDraw, ImageFont

    tiles = [im.convert("RGB") for im in images]
    size = max(14, tiles[0].height // 24)
    font = ImageFont.load_default(size=size)
    label_h = size + 2 * gap
    width = sum(t.width for t in tiles) + gap * (len(tiles) + 1)
    height = max(t.height for t in tiles) + label_h + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    x = gap
    for tile, label in zip(tiles, labels, strict=True):
        draw.text((x, gap), label, fill="black", font=font)
        sheet.paste(tile, (x, label_h))
        x += tile.width + gap
    return sheet

