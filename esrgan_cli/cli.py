"""The `esrgan` command line: the only module that prints, exits, or uses click and rich.

Heavy modules (torch, numpy, Pillow) are imported inside the commands so that
`esrgan --help` and `esrgan --version` answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from esrgan_cli import __version__
from esrgan_cli.defaults import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_OVERLAP, DEFAULT_QUALITY
from esrgan_cli.errors import EsrganError

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def _say(message: str) -> None:
    click.echo(f"esrgan: {message}", err=True)


class TileParam(click.ParamType):
    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and value.lower() == "auto"):
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not 'auto' or a whole number", param, ctx)
        if n != 0 and n < 16:
            self.fail(f"{n} is too small: use 0 (whole image), auto, or at least 16", param, ctx)
        return n


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="esrgan")
def cli() -> None:
    """Upscale images 4x with ESRGAN (RRDBNet), seam-free and safely.

    \b
    Examples:
      esrgan upscale photo.jpg -o photo_x4.png
      esrgan upscale scan.tif -o big.tif --tile 256 --model esrgan-psnr-x4
      esrgan upscale art.png -o art.png --model my-model.safetensors --outscale 2
    """


@cli.command()
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path, dir_okay=True))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output file; its extension picks the format (png, jpg, webp, tiff, bmp).")
@click.option("-m", "--model", default=None, metavar="M",
              help="Registry name, local .safetensors/.pth/.pt/.ckpt file, or hf:OWNER/REPO/FILE[@REV]. "
                   "Default: the registry's default model.")
@click.option("--tile", type=TileParam(), default="auto", show_default=True,
              help="Core tile size in input pixels; 0 runs the whole image at once; auto fits the memory budget.")
@click.option("--overlap", type=click.IntRange(min=0), default=DEFAULT_OVERLAP, show_default=True,
              help="Input pixels of context around each tile (what makes tiles seam-free).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              show_default=True, help="auto: fp16 on CUDA, fp32 elsewhere. The CPU always runs fp32.")
@click.option("--outscale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Final scale (e.g. 2 or 3.5 with a x4 model): the model's output resized with Lanczos.")
@click.option("--quality", type=click.IntRange(1, 100), default=DEFAULT_QUALITY, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--alpha", "alpha_mode", type=click.Choice(["resize", "model"]), default="resize",
              show_default=True, help="Transparency: resized with Lanczos, or upscaled by the model too.")
@click.option("--max-output-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_OUTPUT_PIXELS,
              show_default=True, help="Refuse outputs larger than this (0: no limit).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary; errors still go to stderr.")
def upscale(
    input_path: Path, output_path: Path, model: str | None, tile: int | None, overlap: int, device: str,
    precision: str, outscale: float | None, quality: int, alpha_mode: str, max_output_pixels: int, quiet: bool,
) -> None:
    """Upscale the image IN into the file given by -o.

    \b
    Examples:
      esrgan upscale photo.jpg -o photo_x4.png
      esrgan upscale huge.png -o out.png --tile 256 --device cuda
      esrgan upscale logo.png -o logo_x2.webp --outscale 2 --quality 90
      esrgan upscale in.png -o out.png --model hf:OWNER/REPO/model.safetensors
    """
    if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise click.BadParameter(
            f"unknown extension {output_path.suffix!r} (use {', '.join(s[1:] for s in OUTPUT_SUFFIXES)})",
            param_hint="'-o'",
        )
    from esrgan_cli.engine import Upscaler, choose_placement
    from esrgan_cli.imageio import output_format, read_image, write_image
    from esrgan_cli.pipeline import UpscaleOptions, check_paths, upscale_image
    from esrgan_cli.registry import load_registry, resolve_model
    from esrgan_cli.weights import load_weights

    check_paths(input_path, output_path)
    fmt = output_format(output_path)
    image = read_image(input_path)
    placement = choose_placement(device, precision)
    registry = load_registry()
    resolved = resolve_model(model or registry.default, registry)
    upscaler = Upscaler(load_weights(resolved.path), placement)
    if placement.note and not quiet:
        _say(f"note: {placement.note}")
    options = UpscaleOptions(tile, overlap, outscale, alpha_mode, max_output_pixels)
    with _progress(quiet, f"{input_path.name}") as advance:
        result = upscale_image(image, upscaler, fmt, options, advance)
    notes = list(result.notes)
    write_image(result.image, output_path, fmt, image, quality, notes)
    if not quiet:
        for note in notes:
            _say(f"note: {note}")
        w, h = result.image.size
        tiles = "whole image" if result.model_calls == 1 else f"{result.model_calls} tiles"
        retried = f", {result.fp32_retries} tiles recomputed in fp32" if result.fp32_retries else ""
        _say(
            f"wrote {output_path} ({w}×{h}, model {resolved.source}, {placement.device.type} "
            f"{str(placement.dtype).removeprefix('torch.')}, {tiles}{retried}, {result.seconds:.1f} s)"
        )


class _progress:
    """A rich progress bar over input pixels on stderr; nothing when quiet or not a terminal."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=None)
        return self.advance

    def advance(self, n: int, total: int) -> None:
        self.bar.update(self.task, advance=n, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def main() -> None:
    """Entry point: expected failures become one line on stderr and an exit code, never a traceback."""
    try:
        cli.main(prog_name="esrgan", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _say("interrupted")
        sys.exit(130)
    except EsrganError as e:
        _say(f"error: {e}")
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)
