"""Reading images into float arrays and writing results back, keeping what users care about.

EXIF orientation is applied on read; the ICC profile and EXIF are carried to the
output; alpha is kept as its own plane; grayscale stays grayscale; 16-bit
grayscale stays 16-bit where the output format allows. Writes are atomic.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from esrgan_cli.atomic import atomic_write
from esrgan_cli.capture import decoder_messages, summarise
from esrgan_cli.defaults import FORMATS, LUMA_WEIGHTS
from esrgan_cli.errors import EsrganError, ImageReadError, ImageWriteError, first_line
from esrgan_cli.tiling import to_canvas_dtype

SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF", "BMP"}
CMYK_FORMATS = {"JPEG", "TIFF"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
_LUMA = np.array(LUMA_WEIGHTS, dtype=np.float32)


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # H×W×3 float32 in [0, 1]; grayscale replicated to three channels
    alpha: np.ndarray | None  # H×W float32 in [0, 1]
    grayscale: bool
    bit_depth: int  # 8 or 16
    cmyk: bool
    icc_profile: bytes | None
    exif: bytes | None
    notes: tuple[str, ...] = ()  # what the decoder warned about, for the user

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def output_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        known = ", ".join(sorted({s.lstrip(".") for s in FORMATS}))
        raise ImageWriteError(f"{path}: unknown output format {Path(path).suffix!r} (use one of: {known})")
    return fmt


def read_image(path: Path, max_pixels: int | None = None) -> LoadedImage:
    """Decode `path` fully; any problem, whatever the decoder raises, becomes an ImageReadError with a one-line
    reason (the original exception is its `__cause__`). What the decoder warned about, and what C libraries
    printed meanwhile, become one line in `notes`."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    said: list[str] = []
    try:
        with decoder_messages() as said:
            image = _decode(path, max_pixels)
    except ImageReadError as e:
        if (why := summarise(said, 120)) is None:
            raise
        raise ImageReadError(f"{e}; {why}") from e.__cause__
    note = summarise(said)
    return dataclasses.replace(image, notes=(*image.notes, note)) if note else image


def _decode(path: Path, max_pixels: int | None) -> LoadedImage:
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as img:
            w, h = img.size
            if limit and w * h > limit:
                raise ImageReadError(_too_large(path, w, h, limit))
            if w == 0 or h == 0:
                raise ImageReadError(f"{path}: the image is empty ({w}×{h})")
            img.load()
            return from_pil(img, str(path))
    except EsrganError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path}: over Pillow's decompression-bomb pixel limit ({limit:,} pixels)") from None
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        kind = "empty file" if path.stat().st_size == 0 else "not an image Pillow can read"
        raise ImageReadError(f"{path}: {kind}") from None
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot decode ({first_line(e, 160)})") from e
    except MemoryError as e:
        raise ImageReadError(f"{path}: out of memory while decoding") from e
    except NotImplementedError as e:
        raise ImageReadError(f"{path}: Pillow cannot decode this variant ({first_line(e, 160)})") from e
    except Exception as e:  # a decoder may raise anything; one file must never take the program down
        raise ImageReadError(f"{path}: cannot decode ({type(e).__name__}: {first_line(e, 160)})") from e


def _too_large(path: Path, w: int, h: int, limit: int) -> str:
    return f"{path}: {w}×{h} is {w * h:,} pixels, over the input limit of {limit:,} (a decompression bomb?)"


def from_pil(img: Image.Image, label: str = "image") -> LoadedImage:
    """A decoded Pillow image → planes, its EXIF orientation applied; `label` names it in errors."""
    img = ImageOps.exif_transpose(img) or img
    icc = img.info.get("icc_profile") or None
    exif = img.info.get("exif") or None
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        plane = np.asarray(img).astype(np.int64)
        if plane.min() < 0 or plane.max() > 65535:
            raise ImageReadError(f"{label}: 32-bit integer images are not supported")
        gray = (plane.astype(np.float32) / 65535.0)[..., None]
        return LoadedImage(np.repeat(gray, 3, axis=2), None, True, 16, False, icc, exif)
    elif mode == "CMYK":
        return LoadedImage(_unit(img.convert("RGB")), None, False, 8, True, icc, exif)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            img = img.convert("RGB")
        except ValueError:
            raise ImageReadError(f"{label}: unsupported image mode {mode}") from None
        icc = None  # the profile described the original colour space, not RGB
    if img.mode in ("L", "LA"):
        planes = _unit(img)
        gray = planes[..., :1]
        alpha = planes[..., 1] if img.mode == "LA" else None
        return LoadedImage(np.repeat(gray, 3, axis=2), alpha, True, 8, False, icc, exif)
    planes = _unit(img)
    alpha = planes[..., 3] if img.mode == "RGBA" else None
    return LoadedImage(np.ascontiguousarray(planes[..., :3]), alpha, False, 8, False, icc, exif)


def _unit(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float [0, 1] → 8-bit, rounded."""
    return to_canvas_dtype(rgb, np.dtype(np.uint8))


def image_files(folder: Path) -> list[Path]:
    """Files under `folder` (recursive) with an image extension, hidden names skipped, sorted."""
    root = Path(folder)
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in FORMATS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def output_bit_depth(image: LoadedImage, fmt: str) -> int:
    return 16 if image.bit_depth == 16 and fmt in SIXTEEN_BIT_FORMATS else 8


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 canvas → H×W luma (BT.601), in the canvas's type."""
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for top in range(0, rgb.shape[0], 256):  # in bands, so the float temporary stays small
        luma = rgb[top : top + 256].astype(np.float32) @ _LUMA
        if np.issubdtype(rgb.dtype, np.integer):
            luma = np.clip(np.rint(luma), 0, np.iinfo(rgb.dtype).max)
        out[top : top + 256] = luma
    return out


def resize_alpha(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an H×W alpha plane in [0, 1] to (width, height).

    Bilinear, not Lanczos: a sharper filter rings at opacity steps and leaves a
    faint halo over areas that were fully transparent.
    """
    img = Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


def compose(
    rgb: np.ndarray, alpha: np.ndarray | None, image: LoadedImage, fmt: str, notes: list[str]
) -> Image.Image:
    """Output canvas (uint8 or uint16, H×W×3) + alpha → a Pillow image in the mode the input had."""
    if image.grayscale:
        gray = to_gray(rgb)
        if gray.dtype == np.uint16:
            return Image.fromarray(gray)  # I;16
        base = Image.fromarray(gray)
    else:
        base = Image.fromarray(rgb)
    if alpha is not None:
        if fmt not in ALPHA_FORMATS:
            notes.append(f"{fmt} has no alpha channel: transparency dropped")
        else:
            a = Image.fromarray(np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8))
            base = base.convert("LA" if base.mode == "L" else "RGBA")
            base.putalpha(a)
    if image.cmyk and fmt in CMYK_FORMATS:
        base = base.convert("CMYK")
    return base


def write_image(
    img: Image.Image, path: Path, fmt: str, source: LoadedImage, quality: int, notes: list[str]
) -> None:
    """Encode atomically (see atomic.py): a reader never sees half a file."""
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
    with atomic_write(path) as tmp:
        img.save(tmp, format=fmt, **params)


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

