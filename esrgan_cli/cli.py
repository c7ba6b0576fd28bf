"""The `esrgan` command line: the only module that prints, exits, or uses click and rich.

Heavy modules (torch, numpy, Pillow) are imported inside the commands so that
`esrgan --help` and `esrgan --version` answer at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from esrgan_cli import __version__, cli_train
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
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output file (its extension picks the format: png, jpg, webp, tiff, bmp), or the output folder "
                   "when there are several inputs, a folder, or a glob.")
@click.option("-m", "--model", default=None, metavar="M",
              help="Registry name, local .safetensors/.pth/.pt/.ckpt file, or hf:OWNER/REPO/FILE[@REV]. "
                   "Default: the registry's default model.")
@click.option("--tile", type=TileParam(), default="auto", show_default=True,
              help="Tile size in input pixels for the memory-hungry upsampling; the trunk gets tiles as large as "
                   "the same memory allows (often the whole image: exact output). 0: whole image at once; auto: "
                   "fit the memory budget.")
@click.option("--overlap", type=click.IntRange(min=0), default=DEFAULT_OVERLAP, show_default=True,
              help="Input pixels of context around each trunk tile (what makes tiles seam-free).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              show_default=True, help="auto: fp16 on CUDA, fp32 elsewhere. The CPU always runs fp32.")
@click.option("--outscale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Final scale (e.g. 2 or 3.5 with a x4 model): the model's output resized with Lanczos.")
@click.option("--quality", type=click.IntRange(1, 100), default=DEFAULT_QUALITY, show_default=True,
              help="JPEG/WebP quality.")
@click.option("--alpha", "alpha_mode", type=click.Choice(["resize", "model"]), default="resize",
              show_default=True, help="Transparency: resized, or upscaled by the model too.")
@click.option("--tta", is_flag=True, help="8-fold self-ensemble (flips and rotations): slightly better, ~8x slower.")
@click.option("--max-output-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_OUTPUT_PIXELS,
              show_default=True, help="Refuse outputs larger than this (0: no limit).")
@click.option("-r", "--recursive", is_flag=True, help="Batch: walk subfolders and mirror the tree under the output.")
@click.option("--format", "out_format", type=click.Choice(["png", "jpg", "webp", "tiff"]), default=None,
              help="Batch: output format (default: keep each input's).")
@click.option("--suffix", default="", metavar="TEXT", help="Batch: added to each output's name, e.g. _x4.")
@click.option("--overwrite", is_flag=True, help="Batch: redo outputs that the journal says are done.")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Batch: write a JSON report of done, skipped and failed files.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary; errors still go to stderr.")
def upscale(
    paths: tuple[str, ...], output_path: Path, model: str | None, tile: int | None, overlap: int, device: str,
    precision: str, outscale: float | None, quality: int, alpha_mode: str, tta: bool, max_output_pixels: int,
    recursive: bool, out_format: str | None, suffix: str, overwrite: bool, report: Path | None, quiet: bool,
) -> None:
    """Upscale images: one file into -o FILE, or many into the folder -o OUTDIR.

    Batch runs keep a journal in OUTDIR: a rerun skips outputs that are done and
    still valid (same input, model and options), so an interrupted batch resumes.
    A file that fails is reported and the batch goes on; the exit code is 1 if
    any failed.

    \b
    Examples:
      esrgan upscale photo.jpg -o photo_x4.png
      esrgan upscale huge.png -o out.png --tile 256 --device cuda
      esrgan upscale logo.png -o logo_x2.webp --outscale 2 --quality 90
      esrgan upscale scans/ -o big/ --recursive --format png --report report.json
      esrgan upscale 'shots/*.jpg' extra.png -o out/ --suffix _x4
    """
    from esrgan_cli.pipeline import UpscaleOptions

    options = UpscaleOptions(tile, overlap, outscale, alpha_mode, max_output_pixels, tta)
    if _is_single(paths, output_path):
        _upscale_one(Path(paths[0]), output_path, model, device, precision, options, quality, quiet)
    else:
        _upscale_many(paths, output_path, model, device, precision, options, quality, quiet, recursive,
                      out_format, suffix, overwrite, report)


def _is_single(paths: tuple[str, ...], output: Path) -> bool:
    """One file into -o FILE, or a batch into the folder -o OUTDIR; a mix-up is a usage error."""
    import glob

    many = len(paths) > 1 or glob.has_magic(paths[0]) or Path(paths[0]).is_dir()
    # os.path never raises (Path.is_dir does on a name too long for the file system).
    into_folder = os.path.isdir(output) or str(output).endswith(("/", "\\")) or not output.suffix
    if into_folder:
        return False
    if many:
        raise click.BadParameter(
            f"with several inputs, a folder or a glob, -o names an output folder, not a file like {output.name!r}",
            param_hint="'-o'",
        )
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise click.BadParameter(
            f"unknown extension {output.suffix!r} (use {', '.join(s[1:] for s in OUTPUT_SUFFIXES)}, "
            "or a folder)",
            param_hint="'-o'",
        )
    return True


def _load_upscaler(model: str | None, device: str, precision: str, quiet: bool) -> tuple[Any, Any]:
    from esrgan_cli.engine import Upscaler, choose_placement
    from esrgan_cli.registry import load_registry, resolve_model
    from esrgan_cli.weights import load_weights

    placement = choose_placement(device, precision)
    registry = load_registry()
    resolved = resolve_model(model or registry.default, registry)
    upscaler = Upscaler(load_weights(resolved.path), placement)
    if placement.note and not quiet:
        _say(f"note: {placement.note}")
    return upscaler, resolved


def _upscale_one(input_path: Path, output_path: Path, model: str | None, device: str, precision: str,
                 options: Any, quality: int, quiet: bool) -> None:
    from esrgan_cli.atomic import check_output
    from esrgan_cli.imageio import output_format, read_image, write_image
    from esrgan_cli.pipeline import upscale_image

    check_output(input_path, output_path)
    fmt = output_format(output_path)
    image = read_image(input_path)
    upscaler, resolved = _load_upscaler(model, device, precision, quiet)
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
        placement = upscaler.placement
        _say(
            f"wrote {output_path} ({w}×{h}, model {resolved.source}, {placement.device.type} "
            f"{str(placement.dtype).removeprefix('torch.')}, {tiles}{retried}, {result.seconds:.1f} s)"
        )


def _upscale_many(paths: tuple[str, ...], outdir: Path, model: str | None, device: str, precision: str,
                  options: Any, quality: int, quiet: bool, recursive: bool, out_format: str | None, suffix: str,
                  overwrite: bool, report: Path | None) -> None:
    import dataclasses
    import json
    import time

    from esrgan_cli.batch import Journal, Outcome, collect_jobs, run_batch
    from esrgan_cli.pipeline import batch_stages
    from esrgan_cli.weights import sha256_of

    if outdir.exists() and not outdir.is_dir():
        raise EsrganError(f"{outdir}: not a folder (with several inputs, -o names the output folder)")
    jobs, ignored = collect_jobs(paths, outdir, recursive, out_format, suffix)
    outdir.mkdir(parents=True, exist_ok=True)
    upscaler, resolved = _load_upscaler(model, device, precision, quiet)
    model_sha = sha256_of(resolved.path)
    pixel_options = {**dataclasses.asdict(options), "quality": quality,
                     "dtype": str(upscaler.placement.dtype).removeprefix("torch.")}
    pixel_options.pop("max_output_pixels")
    journal = Journal(outdir)
    todo = [j for j in jobs if overwrite or not journal.is_done(j, model_sha, pixel_options)]
    pending = set(todo)
    skipped = [j for j in jobs if j not in pending]
    if not quiet and (skipped or ignored):
        _say(f"{len(skipped)} already done (journal in {outdir}), {ignored} non-image files ignored")
    stages = batch_stages(upscaler, options, quality, journal, model_sha, pixel_options)

    start = time.perf_counter()
    progress = _progress(quiet, "images", files=len(todo))
    with progress as advance:

        def on_done(outcome: Outcome) -> None:
            if outcome.error:
                progress.say(f"failed: {outcome.error}")
            if advance:
                advance(1, len(todo))

        stages.on_done = on_done
        outcomes = run_batch(todo, stages)
    seconds = time.perf_counter() - start
    done = [o for o in outcomes if not o.error]
    failed = [o for o in outcomes if o.error]
    mpx = sum(o.megapixels for o in done)
    if report is not None:
        from esrgan_cli.atomic import atomic_write

        data = {
            "model": resolved.source, "model_sha256": model_sha, "seconds": round(seconds, 3),
            "input_megapixels_per_second": round(mpx / seconds, 4) if seconds > 0 else None,
            "done": [{"input": str(o.job.src), "output": str(o.job.dst)} for o in done],
            "skipped": [{"input": str(j.src), "output": str(j.dst)} for j in skipped],
            "failed": [{"input": str(o.job.src), "output": str(o.job.dst), "error": o.error} for o in failed],
        }
        with atomic_write(report) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if not quiet or failed:
        _say(f"done {len(done)}, skipped {len(skipped)}, failed {len(failed)} in {seconds:.1f} s "
             f"({mpx / seconds if seconds > 0 else 0:.3f} input Mpx/s)")
    if failed:
        raise SystemExit(1)


def _safetensors_output(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise click.BadParameter(f"{path.name}: the output must be a .safetensors file", param_hint="'-o'")


DTYPE_CHOICE = click.Choice(["auto", "fp16", "fp32"])


def _torch_dtype(name: str, *sources: Any) -> Any:
    """`auto` keeps fp16 when every source was fp16, else fp32."""
    import torch

    if name == "auto":
        return torch.float16 if all(s.source_dtype == torch.float16 for s in sources) else torch.float32
    return {"fp16": torch.float16, "fp32": torch.float32}[name]


@cli.command()
@click.argument("model_a", metavar="A")
@click.argument("model_b", metavar="B")
@click.option("--alpha", "alpha_text", required=True, metavar="α|START:STOP:STEP",
              help="Weight of B: 0 gives A, 1 gives B. A range such as 0:1:0.25 writes one file per value.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output .safetensors; with several alphas, _alphaX is added to its name for each.")
@click.option("--extrapolate", is_flag=True, help="Allow alpha outside [0, 1].")
@click.option("--dtype", type=DTYPE_CHOICE, default="auto", show_default=True,
              help="Stored precision; auto keeps fp16 when both parents are fp16.")
@click.option("--preview", type=click.Path(path_type=Path, dir_okay=False),
              help="Also upscale this image with every blend and save a labelled contact sheet (OUT_preview.png).")
@click.option("--device", default="auto", show_default=True, help="Device for --preview.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def blend(model_a: str, model_b: str, alpha_text: str, output_path: Path, extrapolate: bool, dtype: str,
          preview: Path | None, device: str, quiet: bool) -> None:
    """Network interpolation: (1 - alpha)·A + alpha·B on every weight.

    A is usually the PSNR-oriented model and B the GAN model: small alphas are
    faithful and smooth, large ones sharper with invented texture.

    \b
    Examples:
      esrgan blend esrgan-psnr-x4 esrgan-x4 --alpha 0.6 -o blend60.safetensors
      esrgan blend psnr.pth gan.pth --alpha 0:1:0.25 -o sweep.safetensors --preview photo.png
    """
    _safetensors_output(output_path)
    from esrgan_cli.atomic import check_folder
    from esrgan_cli.blend import blend as blend_weights
    from esrgan_cli.blend import check_compatible, parse_alphas
    from esrgan_cli.weights import LoadedWeights, save_safetensors, sha256_of

    try:
        alphas = parse_alphas(alpha_text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--alpha'") from None
    if not extrapolate and any(not 0 <= a <= 1 for a in alphas):
        raise click.BadParameter("alpha must be within [0, 1] (or pass --extrapolate)", param_hint="'--alpha'")
    check_folder(output_path)
    a, b = _load_model(model_a), _load_model(model_b)
    check_compatible(a, b)
    out_dtype = _torch_dtype(dtype, a, b)
    targets = [output_path] if len(alphas) == 1 else [
        output_path.with_name(f"{output_path.stem}_alpha{alpha:g}{output_path.suffix}") for alpha in alphas
    ]
    parents = {"esrgan.blend.a": model_a, "esrgan.blend.b": model_b,
               "esrgan.blend.a_sha256": sha256_of(a.path), "esrgan.blend.b_sha256": sha256_of(b.path)}
    blended: list[LoadedWeights] = []
    for alpha, target in zip(alphas, targets, strict=True):
        sd = blend_weights(a, b, alpha)
        save_safetensors(sd, a.config, target, {**parents, "esrgan.blend.alpha": repr(alpha)}, dtype=out_dtype)
        blended.append(LoadedWeights(sd, a.config, {}, target, out_dtype))
        if not quiet:
            _say(f"wrote {target} (alpha {alpha:g})")
    if preview is not None:
        _write_preview(preview, blended, alphas, output_path, device, quiet)


def _load_model(spec: str) -> Any:
    from esrgan_cli.registry import resolve_model
    from esrgan_cli.weights import load_weights

    return load_weights(resolve_model(spec).path)


def _write_preview(image_path: Path, models: list[Any], alphas: list[float], output_path: Path, device: str,
                   quiet: bool) -> None:
    from esrgan_cli.engine import Upscaler, choose_placement
    from esrgan_cli.imageio import contact_sheet, read_image, write_image
    from esrgan_cli.pipeline import UpscaleOptions, upscale_image

    image = read_image(image_path)
    placement = choose_placement(device, "auto")
    outputs = [upscale_image(image, Upscaler(m, placement), "PNG", UpscaleOptions()).image for m in models]
    sheet = contact_sheet(outputs, [f"alpha = {a:g}" for a in alphas])
    target = output_path.with_name(f"{output_path.stem}_preview.png")
    write_image(sheet, target, "PNG", image, 95, [])
    if not quiet:
        _say(f"wrote {target} ({len(models)} blends of {image_path.name})")


@cli.command()
@click.argument("model", metavar="IN")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Output .safetensors file.")
@click.option("--dtype", type=DTYPE_CHOICE, default="auto", show_default=True,
              help="Stored precision; auto keeps the source's.")
def convert(model: str, output_path: Path, dtype: str) -> None:
    """Convert any supported checkpoint to safetensors with canonical keys and metadata.

    \b
    Examples:
      esrgan convert RRDB_ESRGAN_x4.pth -o esrgan_x4.safetensors
      esrgan convert esrgan-psnr-x4 -o psnr.safetensors --dtype fp16
    """
    _safetensors_output(output_path)
    import torch

    from esrgan_cli.atomic import check_output
    from esrgan_cli.weights import save_safetensors, sha256_of

    weights = _load_model(model)
    check_output(weights.path, output_path)
    out_dtype = weights.source_dtype if dtype == "auto" else _torch_dtype(dtype)
    if not out_dtype.is_floating_point or out_dtype == torch.float64:
        out_dtype = torch.float32
    meta = {"esrgan.source": model, "esrgan.source_sha256": sha256_of(weights.path)}
    save_safetensors(weights.state_dict, weights.config, output_path, meta, dtype=out_dtype)
    _say(f"wrote {output_path} ({weights.config.num_block} blocks, x{weights.config.scale}, "
         f"{str(out_dtype).removeprefix('torch.')})")


@cli.command()
@click.argument("model", metavar="MODEL")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(model: str, as_json: bool) -> None:
    """Show a model's architecture, scale, size, precision, sha256 and metadata.

    \b
    Examples:
      esrgan info esrgan-x4
      esrgan info my_model.pth --json
    """
    import json

    from esrgan_cli.weights import describe_weights

    data = describe_weights(_load_model(model), model)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("source", "path", "description", "scale", "parameters", "dtype", "macs_per_input_pixel", "sha256",
                "size_bytes"):
        value = data[key]
        click.echo(f"{key:>21}: {value:,}" if isinstance(value, int) else f"{key:>21}: {value}")
    for key, value in sorted(dict(data["metadata"]).items()):  # type: ignore[call-overload]
        click.echo(f"{'metadata ' + key:>21}: {value}")


@cli.group()
def models() -> None:
    """List the registry's models, or download them for offline use."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_list(as_json: bool) -> None:
    """Name, scale, size, license, and whether each model is cached for offline use."""
    import json

    from esrgan_cli.registry import is_cached, load_registry

    registry = load_registry()
    rows = [
        {"name": e.name, "default": e.name == registry.default, "scale": e.config.scale, "size_bytes": e.size,
         "license": e.license, "cached": is_cached(e.source), "source": e.origin(),
         "description": e.description}
        for e in registry.models.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<18} {'scale':>5} {'size':>8}  {'license':<12} {'cached':<6} description")
    for r in rows:
        mb = r["size_bytes"] / 1e6 if r["size_bytes"] else None
        size = "?" if mb is None else f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"
        name = f"{r['name']}{' *' if r['default'] else ''}"
        click.echo(f"{name:<18} {'x' + str(r['scale']):>5} {size:>8}  {r['license']:<12} "
                   f"{'yes' if r['cached'] else 'no':<6} {r['description']}")
    click.echo("(* default)")


@models.command("download")
@click.argument("names", nargs=-1, required=True)
def models_download(names: tuple[str, ...]) -> None:
    """Fetch and verify models now, so later runs work offline.

    \b
    Example:
      esrgan models download esrgan-x4 esrgan-psnr-x4
    """
    from esrgan_cli.registry import load_registry, resolve_model

    registry = load_registry()
    failed = 0
    for name in names:
        try:
            resolved = resolve_model(name, registry)
            _say(f"{name}: ready ({resolved.path})")
        except EsrganError as e:
            failed += 1
            _say(f"error: {e}")
    if failed:
        raise SystemExit(1)


cli_train.register(cli)


class _progress:
    """A rich progress bar over input pixels on stderr; nothing when quiet or not a terminal."""

    def __init__(self, quiet: bool, label: str, files: int | None = None) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.files = files  # a count of files, or None for a bar over pixels
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        count = MofNCompleteColumn() if self.files is not None else TaskProgressColumn()
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=self.files)
        return self.advance

    def say(self, message: str) -> None:
        """A message that does not tear the live bar."""
        if self.bar is not None:
            self.bar.console.print(f"esrgan: {message}", markup=False, highlight=False)
        else:
            _say(message)

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
