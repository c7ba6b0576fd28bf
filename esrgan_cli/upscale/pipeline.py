"""One image through the model: checks, planes, alpha, final resize. No printing: the CLI reports.

`upscale_file` serves the command line (a decoded file in, every frame of it when it has several; Pillow images
for a given output format out), through `upscale_image` for each frame; `upscale_any` serves the Python API (a
Pillow image or a numpy array in, the same kind out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from PIL import Image

from esrgan_cli.batch.journal import Job, Journal, Stages, Written
from esrgan_cli.defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_OVERLAP
from esrgan_cli.errors import EsrganError, ImageReadError, naming
from esrgan_cli.files import sha256_of, write_failure
from esrgan_cli.image.animation import MULTI_FRAME_FORMATS, Animation, check_frames, uniform_modes
from esrgan_cli.image.encode import (
    LoadedImage,
    compose,
    from_pil,
    output_bit_depth,
    output_format,
    read_image,
    resize_alpha,
    to_gray,
    write_image,
)

if TYPE_CHECKING:
    from esrgan_cli.upscale.engine import Upscaler

Progress = Callable[[int, int], None]
"""(input pixels just finished, total input pixels of this image)"""
AlphaMode = Literal["resize", "model"]
AlphaLoss = Literal["drop", "refuse"]
ImageT = TypeVar("ImageT", Image.Image, np.ndarray)


@dataclass(frozen=True)
class UpscaleOptions:
    """What changes the pixels of one upscale. Pass by keyword."""

    tile: int | None = None  # None: automatic from the memory budget; 0: whole image
    overlap: int = DEFAULT_OVERLAP
    outscale: float | None = None
    alpha: AlphaMode = "resize"  # transparency resized (bilinear), or upscaled by the model too
    alpha_loss: AlphaLoss = "drop"  # an output format without alpha: drop it with a note, or refuse the file
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS  # 0: no limit
    tta: bool = False  # 8-fold self-ensemble
    first_frame: bool = False  # an animation or multi-page file: only its first frame


@dataclass
class UpscaleResult:
    image: Image.Image
    model_calls: int
    fp32_retries: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    animation: Animation | None = None  # the other frames, when the file has several and the format holds them

    @property
    def frame_count(self) -> int:
        return self.animation.count if self.animation else 1


@dataclass
class Planes:
    """The model's output before it becomes an image: colour canvas (H×W×3, in the requested type) and alpha."""

    rgb: np.ndarray
    alpha: np.ndarray | None  # H×W float32 in [0, 1]
    blocks: int


def final_size(width: int, height: int, scale: int, outscale: float | None) -> tuple[int, int]:
    """(width, height) of the written image."""
    factor = outscale if outscale is not None else scale
    return max(1, round(width * factor)), max(1, round(height * factor))


def check_size(image: LoadedImage, scale: int, options: UpscaleOptions) -> None:
    """Refuse, before any work, an output over `max_output_pixels` (all frames together: they are held in memory
    until the file is written)."""
    frames = image.frames.images if image.frames else (image,)
    biggest = 0
    for frame in frames:
        out_w, out_h = final_size(frame.width, frame.height, scale, options.outscale)
        biggest += max(out_w * out_h, frame.width * scale * frame.height * scale)
    if options.max_output_pixels and biggest > options.max_output_pixels:
        what = f"{len(frames)} frames" if len(frames) > 1 else f"{image.width}×{image.height}"
        raise ImageReadError(
            f"{what} would upscale to {biggest:,} pixels, over the limit of {options.max_output_pixels:,}; raise it "
            "with --max-output-pixels if you have the memory" + (", or pass --first-frame" if len(frames) > 1 else "")
        )


def work(image: LoadedImage, upscaler: Upscaler, options: UpscaleOptions) -> int:
    """Input pixels the model goes over for one frame: alpha through the model counts twice."""
    planes = 2 if image.alpha is not None and options.alpha == "model" and upscaler.channels == 3 else 1
    return image.width * image.height * planes


def upscale_planes(
    image: LoadedImage, upscaler: Upscaler, options: UpscaleOptions, dtype: np.dtype[Any],
    progress: Progress | None = None,
) -> Planes:
    """Colour through the model into a canvas of `dtype`; alpha resized, or through the model as well."""
    s = upscaler.scale
    total = work(image, upscaler, options)

    def advance(n: int) -> None:
        if progress:
            progress(n, total)

    def run(source: np.ndarray, canvas_dtype: np.dtype[Any]) -> tuple[np.ndarray, int]:
        canvas = np.empty((image.height * s, image.width * s, upscaler.channels), dtype=canvas_dtype)
        blocks = upscaler.upscale_into(source, canvas, options.tile, options.overlap, advance, tta=options.tta)
        return canvas, blocks

    if upscaler.channels == 4:
        # An RGBA model carries transparency itself; an opaque image gets an opaque alpha plane.
        alpha_in = image.alpha if image.alpha is not None else np.ones(image.rgb.shape[:2], np.float32)
        canvas, blocks = run(np.concatenate([image.rgb, alpha_in[..., None]], axis=2), dtype)
        alpha = _unit(canvas[..., 3]) if image.alpha is not None else None
        return Planes(np.ascontiguousarray(canvas[..., :3]), alpha, blocks)
    canvas, blocks = run(image.rgb, dtype)
    alpha = None
    if image.alpha is not None:
        if options.alpha == "model":
            # Alpha is written with 8 bits anyway; a uint8 canvas keeps memory at 3 bytes per output pixel.
            a_canvas, more = run(np.repeat(image.alpha[..., None], 3, axis=2), np.dtype(np.uint8))
            blocks += more
            alpha = a_canvas.mean(axis=2, dtype=np.float32) / 255
        else:
            alpha = resize_alpha(image.alpha, (image.width * s, image.height * s))
    return Planes(canvas, alpha, blocks)


def upscale_image(
    image: LoadedImage, upscaler: Upscaler, fmt: str, options: UpscaleOptions, progress: Progress | None = None
) -> UpscaleResult:
    """A decoded file → the Pillow image to write as `fmt` (PNG, JPEG, …), with notes on what `fmt` cannot hold."""
    start = time.perf_counter()
    check_size(image, upscaler.scale, options)
    retries_before = upscaler.fp32_retries
    dtype = np.dtype({8: np.uint8, 16: np.uint16, 32: np.float32}[output_bit_depth(image, fmt)])
    if image.alpha is not None and options.alpha_loss == "refuse":
        compose(np.zeros((1, 1, 3), dtype), image.alpha[:1, :1], image, fmt, [], True)  # refuse before any work
    planes = upscale_planes(image, upscaler, options, dtype, progress)
    notes: list[str] = list(image.notes)
    result = compose(planes.rgb, planes.alpha, image, fmt, notes, options.alpha_loss == "refuse")
    blocks = planes.blocks
    del planes
    size = final_size(image.width, image.height, upscaler.scale, options.outscale)
    if result.size != size:
        result = result.resize(size, Image.Resampling.LANCZOS)
    return UpscaleResult(result, blocks, upscaler.fp32_retries - retries_before, time.perf_counter() - start, notes)


def reads_all_frames(fmt: str, options: UpscaleOptions) -> bool:
    """Whether a file written as `fmt` needs every frame of its input decoded: only when `fmt` holds several (a
    long animation written as JPEG would otherwise be refused by the input limit for frames it never uses)."""
    return not options.first_frame and fmt in MULTI_FRAME_FORMATS


def upscale_file(
    image: LoadedImage, upscaler: Upscaler, fmt: str, options: UpscaleOptions, progress: Progress | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> UpscaleResult:
    """A decoded file → what to write as `fmt`: every frame when it has several and `fmt` holds them
    (`on_frame(number, count)` before each), else its one image."""
    frames = image.frames
    if frames is None or not reads_all_frames(fmt, options):
        result = upscale_image(image, upscaler, fmt, options, progress)
        if image.frame_count > 1 and not options.first_frame and fmt not in MULTI_FRAME_FORMATS:
            result.notes.append(f"{fmt} holds one image: only the first of its {image.frame_count} frames was "
                                "upscaled (write gif, webp, png or tiff to keep them all, or pass --first-frame)")
        return result
    notes = list(image.notes)
    check_frames(frames, fmt, notes)
    check_size(image, upscaler.scale, options)
    total = sum(work(f, upscaler, options) for f in frames.images)

    def advance(n: int, _: int) -> None:  # progress over the pixels of every frame
        if progress:
            progress(n, total)

    results: list[UpscaleResult] = []
    for number, frame in enumerate(frames.images, start=1):
        if on_frame:
            on_frame(number, len(frames.images))
        results.append(upscale_image(frame, upscaler, fmt, options, advance))
        notes.extend(n for n in results[-1].notes if n not in notes)
    images = uniform_modes([r.image for r in results], fmt)
    first = np.asarray(images[0])
    # Frames that are all the same are one still image (the GIF and APNG encoders would merge them anyway).
    still = all(im.size == images[0].size and np.array_equal(first, np.asarray(im)) for im in images[1:])
    return UpscaleResult(
        images[0], sum(r.model_calls for r in results), sum(r.fp32_retries for r in results),
        sum(r.seconds for r in results), notes, None if still else Animation(tuple(images[1:]), frames),
    )


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
    unit = _unit(array)
    channels = unit.shape[2]
    gray = channels <= 2
    rgb = np.repeat(unit[..., :1], 3, axis=2) if gray else np.ascontiguousarray(unit[..., :3])
    alpha = unit[..., -1] if channels in (2, 4) else None
    bits = 16 if array.dtype == np.uint16 else 8
    return LoadedImage(rgb, alpha, gray, bits, False, None, None), dtype


def _to_array(planes: Planes, grayscale: bool, two_d: bool) -> np.ndarray:
    colour = to_gray(planes.rgb)[..., None] if grayscale else planes.rgb
    if planes.alpha is not None:
        alpha = planes.alpha
        if np.issubdtype(colour.dtype, np.integer):
            top = np.iinfo(colour.dtype).max
            alpha = np.clip(np.rint(alpha * top), 0, top)
        colour = np.concatenate([colour, alpha.astype(colour.dtype)[..., None]], axis=2)
    return colour[..., 0] if two_d else colour


def _resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos to (width, height), plane by plane in float, back to the array's type."""
    planes = array[..., None] if array.ndim == 2 else array
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)) for c in range(planes.shape[2])], axis=2)
    if np.issubdtype(array.dtype, np.integer):
        top = np.iinfo(array.dtype).max
        out = np.clip(np.rint(out), 0, top)
    else:
        out = np.clip(out, 0.0, 1.0)
    out = out.astype(array.dtype)
    return out[..., 0] if array.ndim == 2 else out


def batch_stages(
    upscaler: Upscaler, options: UpscaleOptions, quality: int, journal: Journal | None = None,
    model_sha256: str = "", pixel_options: dict[str, object] | None = None,
) -> Stages[tuple[str, LoadedImage], UpscaleResult]:
    """Decode, upscale and encode one batch job; a finished output is recorded in `journal`."""

    def decode(job: Job) -> tuple[str, LoadedImage]:
        image = read_image(job.src, all_frames=reads_all_frames(output_format(job.dst), options))
        try:
            return (sha256_of(job.src) if journal else ""), image
        except OSError as e:
            raise ImageReadError(f"{job.src}: cannot read ({e.strerror or e})") from None

    def compute(job: Job, data: tuple[str, LoadedImage]) -> UpscaleResult:
        try:
            return upscale_file(data[1], upscaler, output_format(job.dst), options)
        except EsrganError as e:
            raise naming(job.src, e) from e

    def encode(job: Job, data: tuple[str, LoadedImage], result: UpscaleResult) -> Written:
        sha, image = data
        try:
            job.dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_failure(job.dst.parent, e, "cannot create the folder") from None
        write_image(result.image, job.dst, output_format(job.dst), image, quality, result.notes, result.animation)
        if journal:
            journal.record(job, sha, model_sha256, pixel_options or {})
        frames = image.frames.images[: result.frame_count] if image.frames else (image,)
        return Written(sum(f.width * f.height for f in frames) / 1e6, tuple(result.notes), result.frame_count)

    return Stages(decode, compute, encode)


def _unit(plane: np.ndarray) -> np.ndarray:
    """An integer or float plane → float32 in [0, 1]."""
    if np.issubdtype(plane.dtype, np.integer):
        return plane.astype(np.float32) / np.iinfo(plane.dtype).max
    return np.clip(plane.astype(np.float32), 0.0, 1.0)
