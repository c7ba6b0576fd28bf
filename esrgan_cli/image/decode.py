"""Decoding a file into float planes: EXIF orientation applied, every kind of transparency turned into an alpha
plane (palette, a single transparent colour, an alpha channel), 16-bit kept, float images kept with their range,
and, when asked, every frame of an animation (GIF, WebP, APNG) or page of a multi-page TIFF with its timing.

Nothing a file can do escapes as anything but an ImageReadError: a decoder may raise any exception type.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from esrgan_cli.errors import EsrganError, ImageReadError, first_line
from esrgan_cli.image.capture import decoder_messages, decoder_note

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # H×W×3 float32 in [0, 1]; grayscale replicated to three channels
    alpha: np.ndarray | None  # H×W float32 in [0, 1]
    grayscale: bool
    bit_depth: int  # 8, 16, or 32 for a float image
    cmyk: bool
    icc_profile: bytes | None
    exif: bytes | None
    notes: tuple[str, ...] = ()  # what the decoder warned about, for the user
    value_range: tuple[float, float] | None = None  # a float image's (min, max), mapped to [0, 1] in `rgb`
    frames: Frames | None = None  # every frame or page, this one first, when the file has several and they were read
    frame_count: int = 1  # frames or pages the file says it holds (1 when it cannot tell), read or not

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


Disposal = Literal["none", "background", "previous"]
Blend = Literal["source", "over"]
_GIF_DISPOSAL: dict[int, Disposal] = {0: "none", 1: "none", 2: "background", 3: "previous"}
_APNG_DISPOSAL: dict[int, Disposal] = {0: "none", 1: "background", 2: "previous"}
_APNG_BLEND: dict[int, Blend] = {0: "source", 1: "over"}


@dataclass(frozen=True)
class Frames:
    """Every frame of an animation, or page of a multi-page TIFF, decoded; each frame is the whole canvas as a
    viewer shows it (Pillow composites partial frames), so the frames can be upscaled one by one.

    An APNG may have a default image that is not part of its animation (`default_image`): only viewers without
    APNG support show it. It is then `images[0]`, and `durations`, `disposal` and `blend` describe the animation's
    frames, `images[1:]`; otherwise they describe every image."""

    images: tuple[LoadedImage, ...]  # the first included
    durations: tuple[float, ...]  # milliseconds per frame; empty for TIFF pages, or when the file gives none
    loop: int | None  # how many times to play (0: forever); None: the file says nothing (a GIF then plays once)
    disposal: tuple[Disposal, ...]  # what a viewer does after each frame (GIF, APNG); empty where the format has none
    pages: bool  # TIFF pages, not an animation
    blend: tuple[Blend, ...] = ()  # how each APNG frame was drawn onto the canvas; empty for other formats
    default_image: bool = False  # images[0] is an APNG's hidden default image, not a frame of the animation

    @property
    def animated(self) -> tuple[LoadedImage, ...]:
        """The frames a player shows: every image but a hidden default image."""
        return self.images[1:] if self.default_image else self.images


SizeCheck = Callable[[int, int, int], None]
"""(width, height, frames) from a file's header → raises ImageReadError if the caller will not take that much."""


def read_image(path: Path, max_pixels: int | None = None, *, all_frames: bool = False,
               check: SizeCheck | None = None) -> LoadedImage:
    """Decode `path` fully; any problem, whatever the decoder raises, becomes an ImageReadError with a one-line
    reason (the original exception is its `__cause__`). What the decoder warned about, and what C libraries
    printed meanwhile, become one line in `notes`.

    The first frame or page is the image; with `all_frames`, a file with several also gets `frames` (every
    frame together within `max_pixels`). `check` sees the header's size (and frame count, with `all_frames`)
    before any pixel is decoded."""
    path = Path(path)
    check_input(path)
    said: list[str] = []
    try:
        with decoder_messages() as said:
            image = _decode(path, max_pixels, all_frames, check)
    except ImageReadError as e:
        if (why := decoder_note(said, 120)) is None:
            raise
        raise ImageReadError(f"{e}; {why}") from e.__cause__
    note = decoder_note(said)
    return dataclasses.replace(image, notes=(*image.notes, note)) if note else image


def check_input(path: Path) -> None:
    """A missing path, a symlink that leads nowhere or round in a loop, and a folder, each said as what it is."""
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            if e.errno == errno.ELOOP:
                raise ImageReadError(f"{path}: a symlink loop (the link leads back to itself)") from None
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise ImageReadError(f"{path}: a broken symlink (its target {target} does not exist)") from None
        if e.errno == errno.ENOENT:
            raise ImageReadError(f"{path}: no such file") from None
        if e.errno == errno.ELOOP:  # a loop in a folder of the path
            raise ImageReadError(f"{path}: a symlink loop in its folders") from None
        raise ImageReadError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(f"{path}: {'a folder' if stat.S_ISDIR(st.st_mode) else 'not a file'}")


def _decode(path: Path, max_pixels: int | None, all_frames: bool, check: SizeCheck | None) -> LoadedImage:
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as img:
            w, h = img.size
            if limit and w * h > limit:
                raise ImageReadError(_too_large(path, w, h, limit))
            if w == 0 or h == 0:
                raise ImageReadError(f"{path}: the image is empty ({w}×{h})")
            if check is not None:
                # Counting frames reads only headers (GIF, APNG, WebP, TIFF), never pixels.
                frames = (_frame_count(img) or 1) if all_frames else 1
                try:
                    check(w, h, frames)
                except ImageReadError as e:
                    raise ImageReadError(f"{path}: {e}") from None
                if frames > 1:
                    img.seek(0)  # counting may leave the file on its last frame
            img.load()
            image = from_pil(img, str(path))
            if all_frames:
                image = _with_frames(img, image, path, limit)
            elif (count := _frame_count(img)) and count > 1:
                image = dataclasses.replace(image, frame_count=count)
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
    return image


def _frame_count(img: Image.Image) -> int | None:
    """How many frames the file says it has; None when that cannot be read (counting reads the whole file, and a
    damaged tail may stop it)."""
    try:
        return int(getattr(img, "n_frames", 1))
    except Exception:
        return None


def _with_frames(img: Image.Image, first: LoadedImage, path: Path, limit: int | None) -> LoadedImage:
    """`first` with every frame of `img` decoded. A frame that cannot be decoded ends the animation there, with a
    note: a viewer shows a GIF with a damaged tail the same way."""
    count = _frame_count(img)
    if count == 1:
        return first
    # Pillow gives an APNG's hidden default image as frame 0, with no frame control chunk (so no duration,
    # disposal or blend): it stays out of the timing, which then belongs to the frames after it.
    hidden = img.format == "PNG" and img.info.get("default_image") is True
    images, timing = [first], ([] if hidden else [_timing(img)])
    loop = img.info.get("loop")
    pixels = first.width * first.height
    notes = list(first.notes)
    index = 1
    while count is None or index < count:
        try:
            # A count that failed may leave the file on another frame: seek from the start.
            if count is None and index == 1:
                img.seek(0)
            img.seek(index)
            img.load()
            frame = from_pil(img, f"{path} frame {index + 1}")
        except EOFError:
            if count is None:
                break  # the last frame was the one before: the normal end when the count was unknown
            notes.append(f"frame {index + 1} of {count} is missing; the first {index} are kept")
            break
        except (ImageReadError, *_DECODE_ERRORS, NotImplementedError) as e:
            of = f" of {count}" if count else ""
            notes.append(f"frame {index + 1}{of} cannot be decoded ({first_line(e, 120)}); the first {index} "
                         f"{'is' if index == 1 else 'are'} kept")
            break
        pixels += frame.width * frame.height
        if limit and pixels > limit:
            raise ImageReadError(f"{path}: its frames hold more than {limit:,} pixels together, over the input "
                                 "limit; pass --first-frame to upscale only the first")
        images.append(frame)
        timing.append(_timing(img))
        index += 1
    if len(images) == 1:
        return dataclasses.replace(first, notes=tuple(notes))
    pages = img.format == "TIFF"
    durations = [t[0] for t in timing]
    disposal = [t[1] for t in timing]
    blend = [t[2] for t in timing]
    frames = Frames(
        images=tuple(images),
        # A frame without a duration has no delay (a GIF frame without a graphic control extension); only a file
        # that gives none at all has no timing to keep.
        durations=() if pages or all(d is None for d in durations) else tuple(d or 0.0 for d in durations),
        loop=_loop(loop),
        disposal=() if None in disposal else tuple(d for d in disposal if d is not None),
        pages=pages,
        blend=() if None in blend else tuple(b for b in blend if b is not None),
        default_image=hidden,
    )
    return dataclasses.replace(first, frames=frames, frame_count=len(images), notes=tuple(notes))


def _timing(img: Image.Image) -> tuple[float | None, Disposal | None, Blend | None]:
    """The current frame's duration (milliseconds), disposal and blend; None for what the file does not say."""
    duration = img.info.get("duration")
    return (float(duration) if isinstance(duration, (int, float)) else None), _disposal(img), _blend(img)


def _disposal(img: Image.Image) -> Disposal | None:
    """What a viewer does after the current frame: GIF's disposal method or APNG's dispose op; None if unknown."""
    if img.format == "GIF":
        return _GIF_DISPOSAL.get(int(getattr(img, "disposal_method", 0)))
    if img.format == "PNG" and isinstance(op := img.info.get("disposal"), int):
        return _APNG_DISPOSAL.get(op)
    return None


def _blend(img: Image.Image) -> Blend | None:
    """How the current APNG frame is drawn onto the canvas (its blend op); None for other formats."""
    if img.format == "PNG" and isinstance(op := img.info.get("blend"), int):
        return _APNG_BLEND.get(op)
    return None


def _loop(value: object) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _too_large(path: Path, w: int, h: int, limit: int) -> str:
    return f"{path}: {w}×{h} is {w * h:,} pixels, over the input limit of {limit:,} (a decompression bomb?)"


def from_pil(img: Image.Image, label: str = "image") -> LoadedImage:
    """A decoded Pillow image → planes, its EXIF orientation applied; `label` names it in errors."""
    img = ImageOps.exif_transpose(img) or img
    icc = img.info.get("icc_profile") or None
    exif = img.info.get("exif") or None
    mode = img.mode
    notes: list[str] = []
    if "transparency" in img.info and mode in ("L", "RGB", "1"):
        try:
            img = img.convert("RGBA" if mode == "RGB" else "LA")  # the one transparent colour becomes alpha 0
            mode = img.mode
        except (ValueError, TypeError):
            notes.append(f"its transparent colour {img.info['transparency']!r} is not valid and was ignored")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in _SIXTEEN:
        return _sixteen_bit(img, label, icc, exif, tuple(notes))
    elif mode == "F":
        return _float(img, label, icc, exif)
    elif mode == "CMYK":
        return LoadedImage(_unit(img.convert("RGB")), None, False, 8, True, icc, exif, tuple(notes))
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            img = img.convert("RGBA" if "A" in mode else "RGB")
        except ValueError:
            raise ImageReadError(f"{label}: unsupported image mode {mode}") from None
        icc = None  # the profile described the original colour space, not RGB
    if img.mode in ("L", "LA"):
        planes = _unit(img)
        gray = planes[..., :1]
        alpha = planes[..., 1] if img.mode == "LA" else None
        return LoadedImage(np.repeat(gray, 3, axis=2), alpha, True, 8, False, icc, exif, tuple(notes))
    planes = _unit(img)
    alpha = planes[..., 3] if img.mode == "RGBA" else None
    return LoadedImage(np.ascontiguousarray(planes[..., :3]), alpha, False, 8, False, icc, exif, tuple(notes))


def _sixteen_bit(img: Image.Image, label: str, icc: bytes | None, exif: bytes | None,
                 notes: tuple[str, ...]) -> LoadedImage:
    """16-bit grayscale (or 32-bit integer within 16 bits); a single transparent value becomes alpha."""
    plane = np.asarray(img).astype(np.int64)
    lo, hi = int(plane.min()), int(plane.max())
    if lo < 0 or hi > 65535:
        raise ImageReadError(f"{label}: a 32-bit integer image with values {lo} to {hi}, outside 0..65535, "
                             "is not supported")
    alpha = None
    transparent = img.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        alpha = (plane != transparent).astype(np.float32)
    gray = (plane.astype(np.float32) / 65535.0)[..., None]
    return LoadedImage(np.repeat(gray, 3, axis=2), alpha, True, 16, False, icc, exif, notes)


def _float(img: Image.Image, label: str, icc: bytes | None, exif: bytes | None) -> LoadedImage:
    """A 32-bit float image: its values mapped from their own range to [0, 1], the range kept for the output."""
    plane = np.asarray(img, dtype=np.float32)
    if not np.isfinite(plane).all():
        raise ImageReadError(f"{label}: the float image holds NaN or infinite values")
    lo, hi = float(plane.min()), float(plane.max())
    unit = (plane - lo) / (hi - lo) if hi > lo else np.zeros_like(plane)
    gray = np.repeat(unit.astype(np.float32)[..., None], 3, axis=2)
    return LoadedImage(gray, None, True, 32, False, icc, exif, value_range=(lo, hi))


def _unit(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


