"""`esrgan upscale`: one file into -o FILE, or a batch into the folder -o OUTDIR."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from esrgan_cli.cli.common import (
    SETTINGS,
    DeviceParam,
    ProgressBar,
    Run,
    TileParam,
    check_twin,
    notes_line,
    say,
)
from esrgan_cli.cli.video import check_pairing, upscale_one_video, video_options
from esrgan_cli.defaults import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_OVERLAP,
    DEFAULT_QUALITY,
    FORMAT_SUFFIXES,
    FORMATS,
    VIDEO_OUTPUT_SUFFIXES,
)

if TYPE_CHECKING:
    from esrgan_cli.batch.cluster.protocol import ClusterOptions
    from esrgan_cli.upscale.device import Precision
    from esrgan_cli.upscale.pipeline import AlphaLoss, AlphaMode
    from esrgan_cli.upscale.upscaler import Upscaler


def register(group: click.Group) -> None:
    group.add_command(upscale)


@click.command()
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output file (its extension picks the format: png, jpg, webp, tiff, bmp, gif; for a video mp4, mkv, "
                   "webm, mov), or the output folder when there are several inputs, a folder, or a glob.")
@click.option("-m", "--model", default=None, metavar="M",
              help="Registry name, local .safetensors/.pth/.pt/.ckpt file, or hf:OWNER/REPO/FILE[@REV]. "
                   "Default: the registry's default model.")
@click.option("--strength", type=click.FloatRange(0, 1), default=None, metavar="S",
              help="0..1: the model's weights interpolated with its faithful (PSNR-stage) twin's as it loads, "
                   "S·model + (1-S)·twin: 1 is the model (crisp), 0 the twin (clean). Only for models with a twin "
                   "(esrgan models list).")
@click.option("--tile", type=TileParam(), default="auto", show_default=True,
              help="Tile size in input pixels for the memory-hungry upsampling; the trunk gets tiles as large as "
                   "the same memory allows (often the whole image: exact output). 0: whole image at once; auto: "
                   "fit the memory budget.")
@click.option("--overlap", type=click.IntRange(min=0), default=DEFAULT_OVERLAP, show_default=True,
              help="Input pixels of context around each trunk tile (what makes tiles seam-free).")
@click.option("--device", type=DeviceParam(), default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              show_default=True, help="auto: fp16 on CUDA, fp32 elsewhere. The CPU always runs fp32.")
@click.option("--outscale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Final scale (e.g. 2 or 3.5 with a x4 model): the model's output resized with Lanczos.")
@click.option("--quality", type=click.IntRange(1, 100), default=DEFAULT_QUALITY, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--alpha", "alpha_mode", type=click.Choice(["resize", "model"]), default="resize",
              show_default=True, help="Transparency: resized, or upscaled by the model too.")
@click.option("--alpha-loss", type=click.Choice(["drop", "refuse"]), default="drop", show_default=True,
              help="An output format without alpha (jpg) for a transparent image: drop it with a note, or refuse.")
@click.option("--tta", is_flag=True, help="8-fold self-ensemble (flips and rotations): slightly better, ~8x slower.")
@click.option("--first-frame", is_flag=True,
              help="Animated GIF/WebP/APNG or multi-page TIFF: upscale only the first frame or page.")
@click.option("--max-output-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_OUTPUT_PIXELS,
              show_default=True, help="Refuse outputs larger than this (0: no limit).")
@click.option("-r", "--recursive", is_flag=True, help="Batch: walk subfolders and mirror the tree under the output.")
@click.option("--format", "out_format", type=click.Choice(list(FORMAT_SUFFIXES)), default=None,
              help="Batch: output format (default: keep each input's where esrgan writes it, "
                   "else png after the input's name: tex.dds -> tex.dds.png).")
@click.option("--suffix", default="", metavar="TEXT", help="Batch: added to each output's name, e.g. _x4.")
@click.option("--overwrite", is_flag=True, help="Batch: redo outputs that the journal says are done.")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Batch: write a JSON report of done, skipped and failed files.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Batch: run on a Ray cluster: auto (RAY_ADDRESS or a running `ray start`), local (start one on "
                   "this machine), HOST:PORT or ray://HOST:PORT. Needs pip install \".[ray]\" in the esrgan checkout; "
                   "Ray's own messages show (on stderr) only with esrgan --debug.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Batch: model replicas. With --ray: one GPU each where the cluster has GPUs (default: one per GPU, "
                   "else one per node). Without --ray: one process per GPU of this machine.")
@video_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary; errors still go to stderr.")
@click.option("-v", "--verbose", is_flag=True,
              help="Batch: name each file of the input folders that is not read (no image extension Pillow reads, "
                   "a symlinked folder, a FIFO), and why.")
def upscale(
    paths: tuple[str, ...], output_path: Path, model: str | None, strength: float | None, tile: int | None,
    overlap: int, device: str,
    precision: str, outscale: float | None, quality: int, alpha_mode: str, alpha_loss: str, tta: bool,
    first_frame: bool, max_output_pixels: int, recursive: bool, out_format: str | None, suffix: str,
    overwrite: bool, report: Path | None, ray_address: str | None, workers: int | None, codec: str | None,
    crf: int | None, preset: str | None, pix_fmt: str | None, quiet: bool, verbose: bool,
) -> None:
    """Upscale images and videos: one file into -o FILE, or many into the folder -o OUTDIR.

    A video (mp4, mkv, webm, mov, ...) becomes a video of the kind -o's extension names, with its timing, audio,
    subtitles and metadata kept; --codec, --crf, --preset and --pix-fmt choose the encoding. Video needs the
    `video` extra (PyAV).

    Batch runs keep a journal in OUTDIR: a rerun skips outputs that are done and
    still valid (same input, model and options), so an interrupted batch resumes.
    A file that fails is reported and the batch goes on; the exit code is 1 if
    any failed.

    \b
    Examples:
      esrgan upscale photo.jpg -o photo_x4.png
      esrgan upscale huge.png -o out.png --tile 256 --device cuda
      esrgan upscale logo.png -o logo_x2.webp --outscale 2 --quality 90
      esrgan upscale photo.png -o out.png --model compact-x4 --strength 0.5
      esrgan upscale scans/ -o big/ --recursive --format png --report report.json
      esrgan upscale 'shots/*.jpg' extra.png -o out/ --suffix _x4
      esrgan upscale archive/ -o big/ -r --ray HEAD:6379 --workers 8
      esrgan upscale clip.mp4 -o clip_x4.mp4 --crf 20
    """
    from esrgan_cli.batch.plan import BatchOptions
    from esrgan_cli.upscale.pipeline import UpscaleOptions
    from esrgan_cli.video.codecs import VideoEncoding

    if strength is not None:
        check_twin(model)
    options = UpscaleOptions(tile=tile, overlap=overlap, outscale=outscale, alpha=cast("AlphaMode", alpha_mode),
                             alpha_loss=cast("AlphaLoss", alpha_loss),
                             max_output_pixels=max_output_pixels, tta=tta, first_frame=first_frame, strength=strength)
    single = _is_single(paths, output_path, quiet)
    run = Run(model=model, device=device, precision=cast("Precision", precision), options=options,
              quality=quality, quiet=quiet, verbose=verbose)
    if single:
        if ray_address is not None or workers is not None:
            raise click.UsageError("--ray and --workers are for batches: several inputs, a folder or a glob")
        encoding = VideoEncoding(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
        if check_pairing(Path(paths[0]), output_path, encoding):
            upscale_one_video(Path(paths[0]), output_path, run, encoding, load_upscaler)
        else:
            _upscale_one(Path(paths[0]), output_path, run)
    else:
        from esrgan_cli.cli.batch import upscale_many

        batch = BatchOptions(recursive=recursive, format=out_format, suffix=suffix, overwrite=overwrite,
                             report=report, quality=quality, cluster=_cluster(ray_address, workers, device, quiet))
        upscale_many(paths, output_path, run, batch)


def _cluster(address: str | None, workers: int | None, device: str, quiet: bool) -> ClusterOptions | None:
    """Where a batch's replicas run: a Ray cluster, one process per GPU here, or (None) this process."""
    from esrgan_cli.batch.cluster.protocol import ClusterOptions

    if address is not None:
        if not address.strip():
            raise click.BadParameter("an address: auto, local, HOST:PORT or ray://HOST:PORT", param_hint="'--ray'")
        return ClusterOptions(address=address.strip(), workers=workers, ray_logs=SETTINGS.debug)
    if workers is None or workers == 1:
        return None
    from esrgan_cli.batch.cluster.localpool import local_gpus

    gpus = local_gpus(device)
    if len(gpus) < 2:
        if not quiet:
            say(f"note: --workers {workers} without --ray spreads over GPUs (with --device auto or cuda), and there "
                f"{'is one' if gpus else 'are none'} to spread over: one process runs (it uses every CPU core)")
        return None
    return ClusterOptions(workers=min(workers, len(gpus)), devices=tuple(gpus[:workers]))


def _is_single(paths: tuple[str, ...], output: Path, quiet: bool) -> bool:
    """One file into -o FILE, or a batch into the folder -o OUTDIR; a mix-up is a usage error."""
    import glob

    many = len(paths) > 1 or glob.has_magic(paths[0]) or Path(paths[0]).is_dir()
    # os.path never raises (Path.is_dir does on a name too long for the file system).
    into_folder = os.path.isdir(output) or str(output).endswith(("/", "\\")) or not output.suffix
    if into_folder:
        if not many and not quiet and not os.path.isdir(output) and not str(output).endswith(("/", "\\")):
            # `-o out` for one file: a folder is meant as often as a file without its extension; say which it is.
            say(f"note: -o {output} has no extension, so it names a folder: the output goes into {output}/ "
                f"(give -o {output}.png to write one file)")
        return False
    if many:
        raise click.BadParameter(
            f"with several inputs, a folder or a glob, -o names an output folder, not a file like {output.name!r}",
            param_hint="'-o'",
        )
    if output.suffix.lower() not in FORMATS and output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
        raise click.BadParameter(
            f"unknown extension {output.suffix!r} (use {', '.join(s[1:] for s in FORMATS)}, "
            f"for a video {', '.join(s[1:] for s in VIDEO_OUTPUT_SUFFIXES)}, or a folder)",
            param_hint="'-o'",
        )
    return True


def load_upscaler(run: Run) -> tuple[Upscaler, str]:
    """The model on its device, and the name it goes by in messages."""
    from esrgan_cli.api import load_model
    from esrgan_cli.model.registry import load_registry

    source = run.model or load_registry().default
    strength = run.options.strength
    upscaler = load_model(source, run.device, run.precision, strength=strength)
    if upscaler.placement.note and not run.quiet:
        say(f"note: {upscaler.placement.note}")
    return upscaler, source if strength is None else f"{source} at strength {strength:g}"


def _upscale_one(input_path: Path, output_path: Path, run: Run) -> None:
    from esrgan_cli.files import check_output
    from esrgan_cli.image.decode import check_input
    from esrgan_cli.image.encode import output_format
    from esrgan_cli.upscale.pipeline import upscale_path

    check_input(input_path)
    check_output(input_path, output_path)
    output_format(output_path)
    # The model first: its scale tells how large an input may be, checked from the file's header before decoding.
    upscaler, source = load_upscaler(run)
    bar = ProgressBar(run.quiet, f"{input_path.name}")
    with bar as advance:
        result = upscale_path(input_path, output_path, upscaler, run.options, run.quality, advance,
                              on_frame=lambda i, n: bar.describe(f"{input_path.name} frame {i}/{n}"))
    notes = list(result.notes)
    if not run.quiet:
        if line := notes_line(str(input_path), notes):
            say(line)
        w, h = result.image.size
        frames = f"{result.frame_count} frames of " if result.frame_count > 1 else ""
        # An animation calls the model once per frame at least: only more calls than frames mean tiles.
        if result.model_calls <= result.frame_count:
            tiles = "whole frames" if result.frame_count > 1 else "whole image"
        else:
            tiles = f"{result.model_calls} tiles"
        retried = f", {result.fp32_retries} tiles recomputed in fp32" if result.fp32_retries else ""
        placement = upscaler.placement
        say(
            f"wrote {output_path} ({frames}{w}×{h}, model {source}, {placement.device.type} "
            f"{str(placement.dtype).removeprefix('torch.')}, {tiles}{retried}, {result.seconds:.1f} s)"
        )
