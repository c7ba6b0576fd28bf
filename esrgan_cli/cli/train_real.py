"""`esrgan train`'s real-world options: Real-ESRGAN's degradation, sharpened targets, the U-Net discriminator and
distillation from a teacher. Kept apart from train.py so each stays readable; nothing here imports torch at import
time (`--help` stays fast)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from esrgan_cli.degrade.degradation import DegradationConfig
    from esrgan_cli.training.config import TrainConfig

# The choices of training.config's Degradation and Discriminator types (tests/test_train_real.py checks they agree).
DEGRADATION_CHOICES = ("bicubic", "real")
DISCRIMINATOR_CHOICES = ("vgg", "unet")

_F = TypeVar("_F", bound=Callable[..., Any])


def real_world_options(command: _F) -> _F:
    """The options, added to a click command."""
    options = [
        click.option("--degradation", type=click.Choice(DEGRADATION_CHOICES), default="bicubic", show_default=True,
                     help="How LR patches are made: MATLAB bicubic (the benchmarks'), or real: Real-ESRGAN's "
                          "second-order blur, resize, noise and JPEG, drawn anew for every patch."),
        click.option("--degradation-config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     metavar="FILE.json",
                     help="Override the real degradation's settings (Real-ESRGAN's published ones by default), "
                          'e.g. {"final_sinc_prob": 0.5, "second": {"jpeg_quality": [60, 95]}}.'),
        click.option("--sharpen-gt", is_flag=True,
                     help="Compare the L1 and perceptual terms with the unsharp-masked HR (Real-ESRGAN).",),
        click.option("--discriminator", type=click.Choice(DISCRIMINATOR_CHOICES), default="vgg", show_default=True,
                     help="GAN stage: ESRGAN's VGG-style one, or Real-ESRGAN's U-Net with spectral normalisation "
                          "(per-pixel scores; patch size a multiple of 8)."),
        click.option("--teacher", default=None, metavar="MODEL",
                     help="Distil: the target is this model's output on the same LR (a model name, file or hf:)."),
        click.option("--teacher-weight", type=click.FloatRange(0, 1), default=1.0, show_default=True,
                     help="The target is this much teacher, the rest HR."),
        click.option("--teacher-cache", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
                     help="Keep the teacher's outputs here: a resumed or repeated run with the same teacher, "
                          "degradation, seed and data reads them instead of recomputing them."),
        click.option("--levels-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Weight of an L1 term that keeps flat black, white and gray patches at their level "
                          "(real-world training tends to lift black by a few levels)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def real_world_fields(degradation: str, degradation_config: Path | None, sharpen_gt: bool, discriminator: str,
                      teacher: str | None, teacher_weight: float, teacher_cache: Path | None,
                      levels_weight: float = 0.0) -> dict[str, Any]:
    """The TrainConfig fields the options give, the --degradation-config file read and checked."""
    settings = None
    if degradation_config is not None:
        if degradation != "real":
            raise click.UsageError("--degradation-config needs --degradation real")
        settings = read_settings(degradation_config)
    return dict(degradation=degradation, degradation_config=settings, sharpen_gt=sharpen_gt,
                discriminator=discriminator, teacher=teacher, teacher_weight=teacher_weight,
                teacher_cache=str(teacher_cache) if teacher_cache else None, levels_weight=levels_weight)


def read_settings(path: Path) -> DegradationConfig:
    from esrgan_cli.degrade.degradation import DegradationConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror or e}", param_hint="--degradation-config") from None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{path}: not JSON ({e})", param_hint="--degradation-config") from None
    try:
        return DegradationConfig().overridden(data)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(f"{path}: {e}", param_hint="--degradation-config") from None


def resumed_real_world(ctx: click.Context, stored: TrainConfig) -> TrainConfig:
    """A resumed run keeps its degradation settings: a --degradation-config given again must hold the same ones."""
    given = ctx.params.get("degradation_config")
    if given is not None and read_settings(given) != stored.degradation_config:
        raise click.UsageError(f"--degradation-config {given} differs from the run's settings; a resumed run keeps "
                               "its settings (start a new --out to change them)")
    return stored
