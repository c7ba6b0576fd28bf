"""`esrgan eval`: a model (or bicubic) scored on a benchmark as the literature does, plus a perceptual distance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from esrgan_cli.cli.common import DeviceParam, check_twin, say
from esrgan_cli.cli.train import PERCEPTUAL_INPUT_CHOICES
from esrgan_cli.errors import ModelNotFoundError, OutputWriteError

if TYPE_CHECKING:
    from esrgan_cli.eval.distance import InputConvention, PerceptualDistance
    from esrgan_cli.eval.score import Degradation, ImageScore, Summary, Upscale
    from esrgan_cli.upscale.device import Placement


@click.command("eval")
@click.argument("model", metavar="MODEL")
@click.option("--hr", "hr_dir", type=click.Path(path_type=Path), required=True, help="Folder of HR images.")
@click.option("--lr", "lr_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of LR images (NAME or NAMEx4); default: made from HR by MATLAB-style bicubic.")
@click.option("--scale", type=click.IntRange(min=1), default=None,
              help="Only for MODEL 'bicubic' [default: 4]; a model's own scale is used otherwise.")
@click.option("--tile", type=click.IntRange(min=0), default=None,
              help="Tile size in input pixels; 0 runs each image whole [default: whole when it fits in memory].")
@click.option("--device", type=DeviceParam(), default="auto", show_default=True,
              help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
@click.option("--perceptual-weights", default="auto", show_default=True, metavar="auto|hub|none|PATH",
              help="VGG19 weights for the perceptual distance, as `esrgan train` takes them: a local file, hub "
                   "(timm/vgg19.tv_in1k, downloaded once, 575 MB), none, or auto: the Hub copy if it is already "
                   "cached, else none, with a note.")
@click.option("--perceptual-input", type=click.Choice(PERCEPTUAL_INPUT_CHOICES), default="auto", show_default=True,
              help="The VGG weights' input convention; auto reads the file's metadata.")
@click.option("--degradation", type=click.Choice(["bicubic", "real"]), default="bicubic", show_default=True,
              help="Without --lr, how LR images are made from HR: MATLAB bicubic, or real: Real-ESRGAN's blur, "
                   "resize, noise and JPEG, drawn per image from --seed and its name (reproducible).")
@click.option("--degradation-config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              metavar="FILE.json", help="Override the real degradation's settings, as `esrgan train` takes them.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="The real degradation's seed.")
@click.option("--save-lr", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help="Also write the LR images made from HR here (PNG), to reuse with --lr or other tools.")
@click.option("--strength", type=click.FloatRange(0, 1), default=None, metavar="S",
              help="Score MODEL interpolated with its faithful twin, as `esrgan upscale --strength S` runs it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate(model: str, hr_dir: Path, lr_dir: Path | None, scale: int | None, tile: int | None, device: str,
             perceptual_weights: str, perceptual_input: InputConvention, degradation: str,
             degradation_config: Path | None, seed: int, save_lr: Path | None, strength: float | None,
             as_json: bool) -> None:
    """Y-channel PSNR and SSIM of MODEL on a benchmark, beside bicubic, a perceptual distance and artefacts.

    As in the literature: BT.601 luma, `scale` border pixels cropped, outputs
    rounded to 8 bits. MODEL is a model name, file or hf: spec, or `bicubic`.
    The perceptual distance is LPIPS without its learned weights: unit-normalised
    VGG19 features (relu1_2, relu2_2, relu3_4) compared on RGB; lower is better.
    Artefacts: the grid share (the luma's fine-detail energy at multiples of
    1/scale cycles per pixel, beside the HR image's own) and the chroma error
    (CIELAB a*b* distance to HR, RMS and 99th percentile).

    \b
    Examples:
      esrgan eval bicubic --hr Set5/HR --lr Set5/LR_bicubic/X4
      esrgan eval runs/psnr/model_100000.safetensors --hr Set14/HR --json
      esrgan eval compact-x4 --hr Set14/HR --perceptual-weights vgg19.safetensors
      esrgan eval compact-real-x4 --hr photos/ --degradation real --seed 1 --save-lr photos_lr/
      esrgan eval compact-x4 --hr Set14/HR --strength 0.5
    """
    import json

    from esrgan_cli.eval.score import mean_scores, pair_images, score_pairs
    from esrgan_cli.upscale.device import choose_placement

    # fp32 everywhere: a benchmark figure must not depend on the device's half precision.
    made = _degradation(degradation, degradation_config, seed, lr_dir, save_lr)  # usage errors first
    placement = choose_placement(device, "fp32")
    upscale, s, label = _upscaler(model, scale, tile, placement, strength)
    pairs = pair_images(hr_dir, lr_dir, s)
    distance, note = _distance(perceptual_weights, perceptual_input, placement)
    with_distance = distance is not None
    if not as_json:
        click.echo(_row("image", "PSNR", "SSIM", "percept", "bicubic", "SSIM", "percept", with_distance))
    scores = []
    for score in score_pairs(pairs, upscale, s, made, distance):
        scores.append(score)
        if not as_json:
            click.echo(_score_row(score.name, score, with_distance))
    mean = mean_scores(scores)
    if as_json:
        data = {"model": label, "scale": s, "hr": str(hr_dir), "lr": str(lr_dir) if lr_dir else None,
                "degradation": None if lr_dir else made.name,
                "perceptual_distance": distance.describe() if distance else None,
                "images": [vars(x) for x in scores], "mean": vars(mean)}
        click.echo(json.dumps(data, indent=2))
    else:
        _print_footer(label, s, len(scores), mean, distance)
        _print_artefacts(label, s, scores, mean)
    if note:  # after the figures, so that a failure on the way stays a one-line error
        say(f"note: no perceptual distance: {note}")


def _print_footer(label: str, s: int, n: int, mean: Summary, distance: PerceptualDistance | None) -> None:
    click.echo(_score_row("mean", mean, distance is not None))
    columns = "PSNR dB, SSIM, perceptual distance" if distance else "PSNR dB, SSIM"
    click.echo(f"({label}: {columns} | bicubic: {columns}; Y channel, {s}-pixel border cropped, {n} images)")
    if distance is not None:
        from esrgan_cli.eval.distance import relu_name

        layers = ", ".join(relu_name(name) for name in distance.config.layers)
        click.echo(f"(perceptual distance: unit-normalised VGG19 {layers} features, LPIPS without learned weights, "
                   f"lower is better, not comparable with published LPIPS; weights {distance.source})")


def _print_artefacts(label: str, s: int, scores: list[ImageScore], mean: Summary) -> None:
    """The second table: grid share (model, bicubic, HR) and chroma error to HR (model, bicubic)."""
    click.echo()
    click.echo(f"{'artefacts':<20} {'grid %':>8} {'bicubic':>8} {'HR':>8}   {'chroma':>8} {'p99':>8}   "
               f"{'bicubic':>8} {'p99':>8}")
    rows: list[tuple[str, ImageScore | Summary]] = [(score.name, score) for score in scores]
    for name, x in [*rows, ("mean", mean)]:
        click.echo(f"{name:<20} {_percent(x.grid_share)} {_percent(x.grid_share_bicubic)} "
                   f"{_percent(x.grid_share_hr)}   {_ab(x.chroma_rms)} {_ab(x.chroma_p99)}   "
                   f"{_ab(x.chroma_rms_bicubic)} {_ab(x.chroma_p99_bicubic)}")
    click.echo(f"({label} | bicubic | HR: grid share, the % of the luma's fine-detail energy at multiples of 1/{s} "
               f"cycles per pixel, a pattern on the input pixel grid: compare with HR's. {label} | bicubic: chroma "
               "error, the CIELAB a*b* distance to HR, RMS and 99th percentile; lower is better)")


def _percent(v: float | None) -> str:
    return f"{'':>8}" if v is None else f"{v * 100:>8.3f}"


def _ab(v: float | None) -> str:
    return f"{'':>8}" if v is None else f"{v:>8.2f}"


def _degradation(name: str, settings: Path | None, seed: int, lr_dir: Path | None,
                 save_lr: Path | None) -> Degradation:
    """How LR images are made from HR ones (and saved, with --save-lr)."""
    from esrgan_cli.eval.score import BICUBIC

    if lr_dir is not None and (name != "bicubic" or save_lr is not None):
        raise click.UsageError("--degradation and --save-lr make LR images from HR; with --lr they are read instead")
    if settings is not None and name != "real":
        raise click.UsageError("--degradation-config needs --degradation real")
    made = BICUBIC
    if name == "real":
        from esrgan_cli.cli.train_real import read_settings
        from esrgan_cli.eval.realworld import real_degradation

        made = real_degradation(seed, read_settings(settings) if settings else None)
    return made if save_lr is None else _saving(made, save_lr)


def _saving(made: Degradation, folder: Path) -> Degradation:
    import numpy as np
    from PIL import Image

    from esrgan_cli.eval.score import Degradation
    from esrgan_cli.files import atomic_write

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(f"{folder}: cannot create the folder ({e.strerror or e})") from None

    def make(hr: np.ndarray, scale: int, name: str) -> np.ndarray:
        lr = made.make(hr, scale, name)
        with atomic_write(folder / f"{name}.png") as tmp:
            Image.fromarray(lr).save(tmp, format="PNG")
        return lr

    return Degradation(made.name, make)


def _upscaler(model: str, scale: int | None, tile: int | None, placement: Placement,
              strength: float | None) -> tuple[Upscale, int, str]:
    """MODEL (at `strength`, when given) as an 8-bit upscaler, its scale, and its label."""
    from esrgan_cli.eval.score import bicubic, with_upscaler

    if strength is not None:
        check_twin(model)
    if model == "bicubic":
        s = scale or 4
        return bicubic(s), s, "bicubic"
    from esrgan_cli.model.registry import load_named
    from esrgan_cli.upscale.upscaler import Upscaler

    weights = load_named(model, strength=strength)
    if scale is not None and scale != weights.config.scale:
        raise click.UsageError(f"--scale {scale} differs from the model's x{weights.config.scale}")
    upscaler = Upscaler(weights, placement)
    label = model if strength is None else f"{model} at strength {strength:g}"
    return with_upscaler(upscaler, tile), upscaler.scale, label


def _distance(weights: str, convention: InputConvention,
              placement: Placement) -> tuple[PerceptualDistance | None, str | None]:
    """The perceptual distance, or None and why not when no VGG19 weights are at hand."""
    if weights == "none":
        return None, None
    from esrgan_cli.eval.distance import hub_weights_cached, load_distance

    if weights == "auto":
        if not hub_weights_cached():
            return None, ("the VGG19 weights (timm/vgg19.tv_in1k) are not cached; pass --perceptual-weights hub "
                          "to download them (575 MB) or --perceptual-weights PATH")
        weights = "hub"
    try:
        return load_distance(weights, convention, placement.device), None
    except ModelNotFoundError as e:
        if weights != "hub":  # a file that is not there is a mistake, not a missing download
            raise
        return None, str(e)


def _row(name: str, a: str, b: str, c: str, d: str, e: str, f: str, with_distance: bool) -> str:
    if with_distance:
        return f"{name:<20} {a:>8} {b:>8} {c:>8}   {d:>8} {e:>8} {f:>8}"
    return f"{name:<20} {a:>8} {b:>8}   {d:>8} {e:>8}"


def _score_row(name: str, x: ImageScore | Summary, with_distance: bool) -> str:
    def dist(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    return _row(name, f"{x.psnr:.2f}", f"{x.ssim:.4f}", dist(x.perceptual), f"{x.psnr_bicubic:.2f}",
                f"{x.ssim_bicubic:.4f}", dist(x.perceptual_bicubic), with_distance)


def register(group: click.Group) -> None:
    group.add_command(evaluate)
