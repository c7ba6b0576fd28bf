"""One image through the model: checks, tiling, alpha, final resize. No printing: the CLI reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from esrgan_cli.batch import Job, Journal, Stages
from esrgan_cli.defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_OVERLAP
from esrgan_cli.engine import Upscaler, auto_tile, memory_budget, with_tta
from esrgan_cli.errors import ImageReadError
from esrgan_cli.hashing import sha256_of
from esrgan_cli.imageio import (
    LoadedImage,
    compose,
    output_bit_depth,
    output_format,
    read_image,
    resize_alpha,
    write_image,
)
from esrgan_cli.tiling import Model, run_tiled

Progress = Callable[[int, int], None]
"""(input pixels just finished, total input pixels of this image)"""


@dataclass(frozen=True)
class UpscaleOptions:
    tile: int | None = None  # None: automatic from the memory budget; 0: whole image
    overlap: int = DEFAULT_OVERLAP
    outscale: float | None = None
    alpha: str = "resize"  # "resize" or "model"
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    tta: bool = False  # 8-fold self-ensemble


@dataclass
class UpscaleResult:
    image: Image.Image
    model_calls: int
    fp32_retries: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def final_size(image: LoadedImage, scale: int, outscale: float | None) -> tuple[int, int]:
    """(width, height) of the written image."""
    factor = outscale if outscale is not None else scale
    return max(1, round(image.width * factor)), max(1, round(image.height * factor))


def upscale_array(
    rgb: np.ndarray, model: Model | Upscaler, scale: int, tile: int | None, overlap: int, dtype: np.dtype,
    align: int = 1, on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """An H×W×3 float image → (H·s)×(W·s)×3 canvas in `dtype`, and the number of (trunk) passes.

    An `Upscaler` runs staged (trunk and tail tiled apart); any other callback runs on plain tiles. `tile` None
    picks tiles from the memory budget."""
    h, w = rgb.shape[:2]
    canvas = np.empty((h * scale, w * scale, 3), dtype=dtype)
    if isinstance(model, Upscaler):
        return canvas, model.upscale_into(rgb, canvas, tile, overlap, on_progress)
    if tile is None:
        raise ValueError("automatic tiles need an Upscaler")
    calls = run_tiled(rgb, model, scale, canvas, tile, overlap, align=align, on_progress=on_progress)
    return canvas, calls


def upscale_image(
    image: LoadedImage, upscaler: Upscaler, fmt: str, options: UpscaleOptions, progress: Progress | None = None
) -> UpscaleResult:
    start = time.perf_counter()
    s = upscaler.scale
    out_w, out_h = final_size(image, s, options.outscale)
    canvas_pixels = image.width * s * image.height * s
    biggest = max(out_w * out_h, canvas_pixels)
    if options.max_output_pixels and biggest > options.max_output_pixels:
        raise ImageReadError(
            f"{image.width}×{image.height} would upscale to {biggest:,} pixels, over the limit of "
            f"{options.max_output_pixels:,}; raise it with --max-output-pixels if you have the memory"
        )
    tile = options.tile
    if tile is None and options.tta:
        budget = memory_budget(upscaler.placement.device)
        tile = auto_tile(image.height, image.width, options.overlap, upscaler.per_pixel_bytes(), budget)
    dtype = np.uint16 if output_bit_depth(image, fmt) == 16 else np.uint8
    planes = 2 if image.alpha is not None and options.alpha == "model" else 1
    total = image.width * image.height * planes

    def advance(n: int) -> None:
        if progress:
            progress(n, total)

    retries_before = upscaler.fp32_retries
    model = with_tta(upscaler) if options.tta else upscaler
    canvas, calls = upscale_array(image.rgb, model, s, tile, options.overlap, dtype, upscaler.align, advance)
    alpha = None
    if image.alpha is not None:
        if options.alpha == "model":
            a3 = np.repeat(image.alpha[..., None], 3, axis=2)
            # Alpha is written with 8 bits anyway; a uint8 canvas keeps memory at 3 bytes per output pixel.
            a_canvas, more = upscale_array(a3, model, s, tile, options.overlap, np.uint8, upscaler.align, advance)
            calls += more
            alpha = a_canvas.mean(axis=2, dtype=np.float32) / 255
        else:
            alpha = resize_alpha(image.alpha, (image.width * s, image.height * s))
    notes: list[str] = []
    result = compose(canvas, alpha, image, fmt, notes)
    del canvas, alpha
    if result.size != (out_w, out_h):
        result = result.resize((out_w, out_h), Image.Resampling.LANCZOS)
    return UpscaleResult(
        result, calls, upscaler.fp32_retries - retries_before, time.perf_counter() - start, notes
    )


def batch_stages(
    upscaler: Upscaler, options: UpscaleOptions, quality: int, journal: Journal | None = None,
    model_sha256: str = "", pixel_options: dict[str, object] | None = None,
) -> Stages[tuple[str, LoadedImage], UpscaleResult]:
    """Decode, upscale and encode one batch job; a finished output is recorded in `journal`."""

    def decode(job: Job) -> tuple[str, LoadedImage]:
        return (sha256_of(job.src) if journal else ""), read_image(job.src)

    def compute(job: Job, data: tuple[str, LoadedImage]) -> UpscaleResult:
        return upscale_image(data[1], upscaler, output_format(job.dst), options)

    def encode(job: Job, data: tuple[str, LoadedImage], result: UpscaleResult) -> float:
        sha, image = data
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        write_image(result.image, job.dst, output_format(job.dst), image, quality, [])
        if journal:
            journal.record(job, sha, model_sha256, pixel_options or {})
        return image.width * image.height / 1e6

    return Stages(decode, compute, encode)
