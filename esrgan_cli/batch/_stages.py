"""One batch job's three stages for the runner: decode the file, upscale it, encode and journal the output."""

from __future__ import annotations

from esrgan_cli.batch._jobs import Job
from esrgan_cli.batch._journal import Journal
from esrgan_cli.batch.runner import Stages, Written
from esrgan_cli.errors import EsrganError, ImageReadError, naming
from esrgan_cli.files import sha256_of, write_failure
from esrgan_cli.image.decode import LoadedImage, read_image
from esrgan_cli.image.encode import output_format, write_image
from esrgan_cli.upscale.engine import Engine
from esrgan_cli.upscale.pipeline import (
    UpscaleOptions,
    UpscaleResult,
    header_check,
    reads_all_frames,
    upscale_file,
)


def batch_stages(
    upscaler: Engine, options: UpscaleOptions, quality: int, journal: Journal | None = None,
    model_sha256: str = "", pixel_options: dict[str, object] | None = None,
) -> Stages[tuple[str, LoadedImage], UpscaleResult]:
    """Decode, upscale and encode one batch job; a finished output is recorded in `journal`."""

    check = header_check(upscaler.scale, options)

    def decode(job: Job) -> tuple[str, LoadedImage]:
        image = read_image(job.src, all_frames=reads_all_frames(output_format(job.dst), options), check=check)
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
