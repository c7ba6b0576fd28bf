"""One decoded image through the model: checks, planes, alpha, final resize. No printing: the CLI reports.

`upscale_file` serves the command line and batches (a decoded file in, every frame of it when it has several;
Pillow images for a given output format out), through `upscale_image` for each frame; `upscaler.py` serves the
Python API (a Pillow image or a numpy array in, the same kind out) through `upscale_image` and `upscale_planes`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from esrgan_cli.defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_OVERLAP
from esrgan_cli.errors import EsrganError, ImageReadError, naming
from esrgan_cli.image.animation import MULTI_FRAME_FORMATS, Animation, check_frames, frames_for, uniform_modes
from esrgan_cli.image.decode import LoadedImage, read_image
from esrgan_cli.image.encode import compose, output_bit_depth, output_format, resize_alpha, write_image

if TYPE_CHECKING:
    from pathlib import Path

    from esrgan_cli.upscale.engine import Engine

Progress = Callable[[int, int], None]
"""(input pixels just finished, total input pixels of this image)"""
AlphaMode = Literal["resize", "model"]
AlphaLoss = Literal["drop", "refuse"]


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
    # The model's weights interpolated with its faithful twin's when it is loaded (S·model + (1 − S)·twin); None:
    # the model as it is. Applied where the model is loaded (`load_model`), not by `upscale_file`.
    strength: float | None = None


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
    _check_pixels([(f.width, f.height) for f in frames], scale, options)


def header_check(scale: int, options: UpscaleOptions) -> Callable[[int, int, int], None]:
    """The same check for `read_image(check=...)`: (width, height, frames) from a file's header, before it is
    decoded, so a small file that expands to gigabytes is refused at the cost of its header."""

    def check(width: int, height: int, frames: int) -> None:
        _check_pixels([(width, height)] * frames, scale, options)

    return check


def _check_pixels(sizes: list[tuple[int, int]], scale: int, options: UpscaleOptions) -> None:
    biggest = 0
    for width, height in sizes:
        out_w, out_h = final_size(width, height, scale, options.outscale)
        biggest += max(out_w * out_h, width * scale * height * scale)
    if options.max_output_pixels and biggest > options.max_output_pixels:
        what = f"{len(sizes)} frames" if len(sizes) > 1 else "{}×{}".format(*sizes[0])
        raise ImageReadError(
            f"{what} would upscale to {biggest:,} pixels, over the limit of {options.max_output_pixels:,}; raise it "
            "with --max-output-pixels if you have the memory" + (", or pass --first-frame" if len(sizes) > 1 else "")
        )


def work(image: LoadedImage, upscaler: Engine, options: UpscaleOptions) -> int:
    """Input pixels the model goes over for one frame: alpha through the model counts twice."""
    planes = 2 if image.alpha is not None and options.alpha == "model" and upscaler.channels == 3 else 1
    return image.width * image.height * planes


def upscale_planes(
    image: LoadedImage, upscaler: Engine, options: UpscaleOptions, dtype: np.dtype[Any],
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
        alpha = unit(canvas[..., 3]) if image.alpha is not None else None
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
    image: LoadedImage, upscaler: Engine, fmt: str, options: UpscaleOptions, progress: Progress | None = None
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
    image: LoadedImage, upscaler: Engine, fmt: str, options: UpscaleOptions, progress: Progress | None = None,
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
    frames = frames_for(frames, fmt, notes)
    check_frames(frames, fmt, notes)
    check_size(dataclasses.replace(image, frames=frames), upscaler.scale, options)
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


def upscale_path(
    src: Path, dst: Path, upscaler: Engine, options: UpscaleOptions, quality: int, progress: Progress | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> UpscaleResult:
    """One file into one file, as `esrgan upscale IN -o OUT` does it once the model is loaded: the header checked
    against the output limit before decoding, every frame the output format holds, metadata kept, written
    atomically. The command line and the web page both call this, so their outputs are the same bytes."""
    fmt = output_format(dst)
    image = read_image(src, all_frames=reads_all_frames(fmt, options), check=header_check(upscaler.scale, options))
    try:
        result = upscale_file(image, upscaler, fmt, options, progress, on_frame)
    except EsrganError as e:
        raise naming(src, e) from e
    write_image(result.image, dst, fmt, image, quality, result.notes, result.animation)
    return result


def unit(plane: np.ndarray) -> np.ndarray:
    """An integer or float plane → float32 in [0, 1]."""
    if np.issubdtype(plane.dtype, np.integer):
        return plane.astype(np.float32) / np.iinfo(plane.dtype).max
    return np.clip(plane.astype(np.float32), 0.0, 1.0)
