"""`esrgan train`: the command-line side of training (printing lives here); `esrgan eval` is in `evaluate.py`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from esrgan_cli.cli.common import DeviceParam, say
from esrgan_cli.cli.train_progress import StopFlag, TrainProgress
from esrgan_cli.cli.train_real import real_world_fields, real_world_options, resumed_real_world
from esrgan_cli.defaults import TRAIN_CONFIG_FILE, TRAIN_STATE_FILE
from esrgan_cli.errors import EsrganError

if TYPE_CHECKING:  # the modules themselves are imported when a command runs, so that --help stays fast
    from esrgan_cli.model.arch import RRDBConfig
    from esrgan_cli.model.vgg import VGGLayer
    from esrgan_cli.training.config import PerceptualInput, PerceptualLoss, Precision, Stage, TrainConfig, WeightInit

# The choices of the Literal types in training.config and training.perceptual, spelt out here because importing those
# modules would import torch (test_cli checks that --help does not); tests/test_train.py checks that they agree.
STAGE_CHOICES = ("psnr", "gan")
PRECISION_CHOICES = ("fp32", "bf16", "fp16")
WEIGHT_INIT_CHOICES = ("interp", "paper")
PERCEPTUAL_INPUT_CHOICES = ("auto", "imagenet-rgb", "caffe-bgr")
PERCEPTUAL_LOSS_CHOICES = ("l1", "distance")
VGG_LAYER_CHOICES = tuple(f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for i in range(1, n + 1))


def _milestones(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        found = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of iterations") from None
    if not found or any(m < 1 for m in found):
        raise click.BadParameter("milestones are positive iteration numbers")
    return found


@click.command()
@click.option("--stage", type=click.Choice(STAGE_CHOICES), default=None,
              help="psnr: L1 training from scratch; gan: the perceptual + adversarial fine-tune from --init. "
                   "Required for a new run; a resumed run knows its own.")
@click.option("--data", type=click.Path(path_type=Path), help="Folder of HR training images (searched recursively).")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder: models, log.jsonl and the resume state go here.")
@click.option("--val", type=click.Path(path_type=Path), default=None,
              help="Folder of HR validation images, scored (Y-PSNR, SSIM) every --val-every iterations.")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Total iterations [default: 1000].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Patches per iteration (the total over processes with torchrun).")
@click.option("--patch-size", type=click.IntRange(min=8), default=128, show_default=True, help="HR patch side.")
@click.option("--blocks", type=click.IntRange(min=1), default=23, show_default=True, help="RRDB blocks.")
@click.option("--features", type=click.IntRange(min=1), default=64, show_default=True,
              help="Feature channels of the trunk.")
@click.option("--growth", type=click.IntRange(min=1), default=32, show_default=True,
              help="Channels each dense layer adds inside a block.")
@click.option("--scale", type=click.Choice(["1", "2", "4", "8"]), default="4", show_default=True,
              help="How many times larger the model makes images.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 2e-4 psnr, 1e-4 gan].")
@click.option("--milestones", callback=_milestones, default=None, metavar="N,N,...",
              help="Iterations where the learning rate halves [default: the paper's, scaled to --iters].")
@click.option("--warmup", type=click.IntRange(min=0), default=None, metavar="N",
              help="Iterations of linear learning-rate warm-up [default: PSNR stage a tenth of --iters, at most 1000; "
                   "GAN stage 0].")
@click.option("--val-every", type=click.IntRange(min=1), default=None,
              help="Iterations between validations on --val [default: 1000, or --iters if fewer].")
@click.option("--save-every", type=click.IntRange(min=1), default=None,
              help="Iterations between saved models and resume states [default: 1000, or --iters if fewer].")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Iterations between lines of RUN/log.jsonl (mean losses); without a terminal, progress lines too.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its latest state, with its recorded options; --iters, --val, "
                   "--val-every, --save-every, --log-every, --workers, --device and --teacher-cache may be given anew.")
@click.option("--device", type=DeviceParam(), default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp32", show_default=True,
              help="Mixed precision (autocast); fp16 uses loss scaling and needs CUDA.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initial weights and the patch stream: the same seed repeats a run exactly.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader worker processes [default: 4 on CUDA, 0 on CPU].")
@click.option("--weight-init", type=click.Choice(WEIGHT_INIT_CHOICES), default="interp", show_default=True,
              help="PSNR stage: start as a bilinear upscaler (interp), or from the paper's random weights.")
@click.option("--init", "init_path", type=click.Path(path_type=Path), default=None,
              help="The model to start from: the PSNR-stage model for the GAN stage (required there); for the "
                   "PSNR stage, a model to fine-tune (e.g. onto --degradation real) instead of --weight-init.")
@click.option("--perceptual-weights", default="hub", show_default=True, metavar="PATH|hub|random",
              help="VGG19 weights for the perceptual loss: a local file, the Hub (timm/vgg19.tv_in1k), or random "
                   "(tests only).")
@click.option("--perceptual-layer", type=click.Choice(VGG_LAYER_CHOICES), default="conv5_4", show_default=True,
              help="VGG19 layer whose features (before ReLU) are compared.")
@click.option("--perceptual-input", type=click.Choice(PERCEPTUAL_INPUT_CHOICES), default="auto",
              show_default=True, help="The VGG weights' input convention; auto reads the file's metadata.")
@click.option("--perceptual-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="GAN stage: weight of the perceptual term. The paper's 1 is for imagenet-rgb weights; "
                   "caffe-bgr inputs are about 58x larger (0..255 without the std), and their features with them.")
@click.option("--perceptual-loss", type=click.Choice(PERCEPTUAL_LOSS_CHOICES), default="l1", show_default=True,
              help="GAN stage: l1 compares --perceptual-layer's features (ESRGAN); distance is `esrgan eval`'s "
                   "perceptual distance (unit-normalised features at LPIPS's layers up to --perceptual-layer).")
@click.option("--gan-weight", type=click.FloatRange(min=0), default=5e-3, show_default=True,
              help="GAN stage: weight of the relativistic GAN term; 0 trains without a discriminator.")
@click.option("--pixel-weight", type=click.FloatRange(min=0), default=1e-2, show_default=True,
              help="GAN stage: weight of the L1 term.")
@real_world_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; warnings and errors still go to stderr.")
@click.pass_context
def train(ctx: click.Context, stage: Stage | None, data: Path | None, run_dir: Path, val: Path | None,
          iters: int | None, batch_size: int, patch_size: int, blocks: int, features: int, growth: int, scale: str,
          lr: float | None, milestones: tuple[int, ...] | None, warmup: int | None, val_every: int | None,
          save_every: int | None, log_every: int, resume: bool, device: str, precision: Precision, seed: int,
          workers: int | None, weight_init: WeightInit, init_path: Path | None, perceptual_weights: str,
          perceptual_layer: VGGLayer, perceptual_input: PerceptualInput, perceptual_loss: PerceptualLoss,
          perceptual_weight: float, gan_weight: float, pixel_weight: float, degradation: str,
          degradation_config: Path | None, sharpen_gt: bool, discriminator: str, teacher: str | None,
          teacher_weight: float, teacher_cache: Path | None, levels_weight: float, quiet: bool) -> None:
    """Train RRDBNet the ESRGAN way: --stage psnr, then --stage gan from it.

    Every --save-every iterations the EMA model is written as RUN/model_<iter>.safetensors (usable by `esrgan
    upscale`) with the resume state; Ctrl-C saves the state too. Several GPUs or machines: start it with
    torchrun (DistributedDataParallel; --batch-size is the total over processes).

    \b
    Examples:
      esrgan train --stage psnr --data photos/ --val val/ --out runs/psnr --iters 100000
      esrgan train --out runs/psnr --resume
      esrgan train --stage gan --data photos/ --init runs/psnr/model_100000.safetensors --out runs/gan
      esrgan train --stage gan --data photos/ --init model.safetensors --out runs/per --gan-weight 0 \\
        --perceptual-loss distance --perceptual-layer conv3_4
      esrgan train --stage psnr --data photos/ --out runs/real --degradation real --teacher x4plus.safetensors
      torchrun --nproc_per_node 4 -m esrgan_cli train --stage psnr --data photos/ --out runs/psnr
    """
    # What needs no torch is checked first, so that these mistakes are answered at once and alone.
    if resume:
        if not (run_dir / TRAIN_STATE_FILE).is_file():
            raise EsrganError(f"{run_dir}: nothing to resume (no {TRAIN_STATE_FILE})")
        record = _record_before_torch(run_dir)
        if record is not None:
            _refuse_changes(ctx, record)
    else:
        if stage is None:
            raise click.UsageError("give --stage psnr or --stage gan (or --resume a run)")
        if data is None:
            raise click.UsageError("give --data (a folder of HR images), or --resume a run")
        if (run_dir / TRAIN_STATE_FILE).exists():
            raise EsrganError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --out")
    # torchrun's other processes train in silence; rank 0 speaks for the run.
    progress = TrainProgress(quiet or os.environ.get("RANK", "0") != "0")
    # The first line comes before torch loads (a second or two): the user sees at once that something is happening.
    progress.setup(f"resuming the run in {run_dir}: loading PyTorch…" if resume
                   else f"new {stage}-stage run in {run_dir}: loading PyTorch…")

    import torch

    from esrgan_cli.model.arch import RRDBConfig
    from esrgan_cli.training.build import build_trainer
    from esrgan_cli.training.config import TrainConfig
    from esrgan_cli.training.runtime import Distributed, init_distributed
    from esrgan_cli.training.state import stored_config
    from esrgan_cli.upscale.device import choose_placement

    if resume:
        config = resumed_real_world(ctx, _resumed_config(ctx, stored_config(run_dir)))
        device = config.device
    placement = choose_placement(device, "fp32")
    dist_ctx = Distributed.from_env()
    torch_device = placement.device
    if dist_ctx.world > 1 and torch_device.type == "cuda":
        torch_device = torch.device("cuda", dist_ctx.local_rank)
        torch.cuda.set_device(torch_device)
    if not resume:
        assert stage is not None and data is not None  # checked above
        n = iters or 1000
        model = RRDBConfig(num_feat=features, num_block=blocks, num_grow=growth, scale=int(scale))
        if init_path is not None:
            model = _init_architecture(ctx, init_path, model)
        try:
            config = TrainConfig(
                stage=stage, data=str(data), iters=n, val=str(val) if val else None, batch_size=batch_size,
                patch_size=patch_size, lr=lr or 0.0, milestones=milestones, warmup=warmup,
                model=model,
                val_every=val_every or min(1000, n), save_every=save_every or min(1000, n), log_every=log_every,
                seed=seed, workers=workers if workers is not None else (4 if torch_device.type == "cuda" else 0),
                precision=precision, device=device, weight_init=weight_init,
                init=str(init_path) if init_path else None,
                perceptual_weights=perceptual_weights, perceptual_layer=perceptual_layer,
                perceptual_input=perceptual_input, perceptual_weight=perceptual_weight, gan_weight=gan_weight,
                pixel_weight=pixel_weight, perceptual_loss=perceptual_loss,
                **real_world_fields(degradation, degradation_config, sharpen_gt, discriminator, teacher,
                                    teacher_weight, teacher_cache, levels_weight),
            )
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    init_distributed(dist_ctx, torch_device)
    stop = StopFlag(progress.say)
    with stop, progress:
        trainer = build_trainer(config, run_dir, torch_device, resume=resume, report=progress.report, dist=dist_ctx)
        progress.start(trainer.iteration, config.iters, config.log_every, str(torch_device))
        finished = trainer.run(stop.is_set)
    if not finished:
        # The one line about the interruption (main would add "interrupted" for a KeyboardInterrupt).
        say(f"interrupted at iteration {trainer.iteration}; the state is saved: rerun with --resume")
        sys.exit(130)
    if dist_ctx.main and not quiet:
        say(f"done: {config.iters} iterations; model in {run_dir / f'model_{config.iters}.safetensors'}")


def _init_architecture(ctx: click.Context, init_path: Path, given: RRDBConfig) -> RRDBConfig:
    """A run from --init trains that model's architecture; explicit --blocks etc. must agree with it."""
    from esrgan_cli.model.weights import load_weights

    found = load_weights(init_path).config
    for option, field_name in (("blocks", "num_block"), ("features", "num_feat"), ("growth", "num_grow"),
                               ("scale", "scale")):
        if ctx.get_parameter_source(option) == click.core.ParameterSource.COMMANDLINE:
            if getattr(given, field_name) != getattr(found, field_name):
                raise click.UsageError(f"--{option} {getattr(given, field_name)} differs from the --init model's "
                                       f"{getattr(found, field_name)}")
    return found


# How --resume treats each option (tests/test_train.py checks that every option of the command is named here once).
# Options that define what a run computes, with the TrainConfig field that records each: a resumed run keeps the
# recorded value, and one given again must equal it.
RESUME_KEPT: dict[str, str] = {
    "stage": "stage", "data": "data", "batch_size": "batch_size", "patch_size": "patch_size",
    "blocks": "model.num_block", "features": "model.num_feat", "growth": "model.num_grow", "scale": "model.scale",
    "lr": "lr", "milestones": "milestones", "warmup": "warmup", "precision": "precision", "seed": "seed",
    "weight_init": "weight_init", "init_path": "init", "perceptual_weights": "perceptual_weights",
    "perceptual_layer": "perceptual_layer", "perceptual_input": "perceptual_input",
    "perceptual_weight": "perceptual_weight", "perceptual_loss": "perceptual_loss", "gan_weight": "gan_weight",
    "pixel_weight": "pixel_weight", "degradation": "degradation", "degradation_config": "degradation_config",
    "sharpen_gt": "sharpen_gt", "discriminator": "discriminator", "teacher": "teacher",
    "teacher_weight": "teacher_weight", "levels_weight": "levels_weight",
}
# Options that say how long, how visibly and where a run goes, and what it measures: the recorded value unless given
# anew (config.RESUMABLE_FIELDS).
RESUME_CHANGEABLE: dict[str, str] = {
    "iters": "iters", "val": "val", "val_every": "val_every", "save_every": "save_every", "log_every": "log_every",
    "workers": "workers", "device": "device", "teacher_cache": "teacher_cache",
}
# This command's own: where the run is, whether to resume it, and whether to show progress.
RESUME_NOT_RECORDED = ("run_dir", "resume", "quiet")
_PATH_OPTIONS = {"data", "init_path", "val", "teacher_cache"}


def given_options(ctx: click.Context) -> set[str]:
    """The options this command line gave (not left at their defaults)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}


def recorded(record: dict[str, Any], field_path: str) -> Any:
    """A field of a run's configuration as JSON (config.json, or TrainConfig.to_json())."""
    value: Any = record
    for part in field_path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _same(option: str, given: Any, stored: Any) -> bool:
    """Whether an option's value from the command line is the one the run recorded."""
    if given is None or stored is None:
        return given is None and stored is None
    if option in _PATH_OPTIONS:
        return str(given) == str(stored) or Path(given).resolve() == Path(stored).resolve()
    if isinstance(stored, bool):
        return bool(given) == stored
    if isinstance(stored, (int, float)):
        return float(given) == float(stored)
    if isinstance(stored, (list, tuple)):
        return tuple(sorted(given)) == tuple(stored)
    return str(given) == str(stored)


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _refuse_changes(ctx: click.Context, record: dict[str, Any]) -> None:
    """A kept option given differently from the run's record is a usage error (exit 2)."""
    given = given_options(ctx)
    for option, field_path in RESUME_KEPT.items():
        if option not in given or option == "degradation_config":  # its file is read and compared in train_real
            continue
        value, stored_value = ctx.params[option], recorded(record, field_path)
        if option == "stage" and value != stored_value:
            raise click.UsageError(f"the run in --out is a {stored_value} run, not {value}")
        if not _same(option, value, stored_value):
            flag = "--init" if option == "init_path" else f"--{option.replace('_', '-')}"
            raise click.UsageError(f"{flag} {_shown(value)} differs from the run's {_shown(stored_value)}; a resumed "
                                   "run keeps its settings (start a new --out to change them)")


def _record_before_torch(run_dir: Path) -> dict[str, Any] | None:
    """The run's config.json, to refuse a changed option before torch loads; None where it cannot be read (the
    resume state, read later, is the authority, and is checked again then)."""
    try:
        record = json.loads((run_dir / TRAIN_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _resumed_config(ctx: click.Context, stored: TrainConfig) -> TrainConfig:
    """The run's recorded configuration; a changeable option given now replaces its recorded value, and a kept one
    given differently is refused."""
    _refuse_changes(ctx, json.loads(stored.to_json()))
    given = given_options(ctx)
    changes: dict[str, object] = {}
    for option, field_name in RESUME_CHANGEABLE.items():
        if option in given:
            value = ctx.params[option]
            changes[field_name] = str(value) if option in _PATH_OPTIONS and value is not None else value
    return stored.resumed_with(**changes)



def register(group: click.Group) -> None:
    group.add_command(train)
