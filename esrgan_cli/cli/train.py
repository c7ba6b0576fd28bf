"""`esrgan train`: the command-line side of training (printing lives here); `esrgan eval` is in `evaluate.py`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from esrgan_cli.cli.common import DeviceParam, say
from esrgan_cli.cli.train_real import FIXED_ON_RESUME, real_world_fields, real_world_options, resumed_real_world
from esrgan_cli.errors import EsrganError

if TYPE_CHECKING:  # the modules themselves are imported when a command runs, so that --help stays fast
    from esrgan_cli.model.arch import RRDBConfig
    from esrgan_cli.model.vgg import VGGLayer
    from esrgan_cli.training.config import PerceptualInput, PerceptualLoss, Precision, Stage, TrainConfig, WeightInit
    from esrgan_cli.training.runtime import Report

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
@click.option("--stage", type=click.Choice(STAGE_CHOICES), required=True,
              help="psnr: L1 training from scratch; gan: the perceptual + adversarial fine-tune from --init.")
@click.option("--data", type=click.Path(path_type=Path), help="Folder of HR training images (searched recursively).")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder: models, log.jsonl and the resume state go here.")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Folder of HR validation images.")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Total iterations [default: 1000].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--patch-size", type=click.IntRange(min=8), default=128, show_default=True, help="HR patch side.")
@click.option("--blocks", type=click.IntRange(min=1), default=23, show_default=True, help="RRDB blocks.")
@click.option("--features", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--growth", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--scale", type=click.Choice(["1", "2", "4", "8"]), default="4", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 2e-4 psnr, 1e-4 gan].")
@click.option("--milestones", callback=_milestones, default=None, metavar="N,N,...",
              help="Iterations where the learning rate halves [default: the paper's, scaled to --iters].")
@click.option("--warmup", type=click.IntRange(min=0), default=None, metavar="N",
              help="Iterations of linear learning-rate warm-up [default: PSNR stage a tenth of --iters, at most 1000; "
                   "GAN stage 0].")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help="[default: 1000 or --iters]")
@click.option("--save-every", type=click.IntRange(min=1), default=None, help="[default: 1000 or --iters]")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest state.")
@click.option("--device", type=DeviceParam(), default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp32", show_default=True,
              help="Mixed precision (autocast); fp16 uses loss scaling and needs CUDA.")
@click.option("--seed", type=int, default=0, show_default=True)
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
def train(ctx: click.Context, stage: Stage, data: Path | None, run_dir: Path, val: Path | None, iters: int | None,
          batch_size: int, patch_size: int, blocks: int, features: int, growth: int, scale: str, lr: float | None,
          milestones: tuple[int, ...] | None, warmup: int | None, val_every: int | None, save_every: int | None,
          log_every: int, resume: bool, device: str, precision: Precision, seed: int, workers: int | None,
          weight_init: WeightInit, init_path: Path | None, perceptual_weights: str, perceptual_layer: VGGLayer,
          perceptual_input: PerceptualInput, perceptual_loss: PerceptualLoss,
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
      esrgan train --stage psnr --out runs/psnr --resume
      esrgan train --stage gan --data photos/ --init runs/psnr/model_100000.safetensors --out runs/gan
      esrgan train --stage gan --data photos/ --init model.safetensors --out runs/per --gan-weight 0 \\
        --perceptual-loss distance --perceptual-layer conv3_4
      esrgan train --stage psnr --data photos/ --out runs/real --degradation real --teacher x4plus.safetensors
      torchrun --nproc_per_node 4 -m esrgan_cli train --stage psnr --data photos/ --out runs/psnr
    """
    import torch

    from esrgan_cli.model.arch import RRDBConfig
    from esrgan_cli.training.build import build_trainer
    from esrgan_cli.training.config import TrainConfig
    from esrgan_cli.training.runtime import Distributed, init_distributed
    from esrgan_cli.training.state import STATE_FILE, stored_config
    from esrgan_cli.upscale.device import choose_placement

    placement = choose_placement(device, "fp32")
    dist_ctx = Distributed.from_env()
    torch_device = placement.device
    if dist_ctx.world > 1 and torch_device.type == "cuda":
        torch_device = torch.device("cuda", dist_ctx.local_rank)
        torch.cuda.set_device(torch_device)
    if workers is None:
        workers = 4 if torch_device.type == "cuda" else 0
    if resume:
        config = _resumed_config(ctx, stored_config(run_dir), stage, iters, val_every, save_every, log_every, workers)
        config = resumed_real_world(ctx, config)
    else:
        if data is None:
            raise click.UsageError("give --data (a folder of HR images), or --resume a run")
        if (run_dir / STATE_FILE).exists():
            raise EsrganError(f"{run_dir} already holds a run: add --resume to continue it, or choose another --out")
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
                seed=seed, workers=workers, precision=precision, weight_init=weight_init,
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
    bar = _TrainProgress(quiet or not dist_ctx.main, config.iters)
    stop = _StopFlag()
    with stop, bar:
        trainer = build_trainer(config, run_dir, torch_device, resume=resume, report=bar.report, dist=dist_ctx)
        bar.start(trainer.iteration)
        finished = trainer.run(stop.is_set)
    if not finished:
        say(f"interrupted at iteration {trainer.iteration}; the state is saved: rerun with --resume")
        raise KeyboardInterrupt
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


def _resumed_config(ctx: click.Context, stored: TrainConfig, stage: str, iters: int | None, val_every: int | None,
                    save_every: int | None, log_every: int, workers: int) -> TrainConfig:
    """The run's own configuration; options that would change what it computes must not be given differently."""
    if stage != stored.stage:
        raise click.UsageError(f"the run in --out is a {stored.stage} run, not {stage}")
    for option in ("data", "batch_size", "patch_size", "lr", "seed", "precision", "milestones", "warmup",
                   "weight_init", "perceptual_weight", "perceptual_loss", "gan_weight", "pixel_weight",
                   *FIXED_ON_RESUME):
        source = ctx.get_parameter_source(option)
        given = ctx.params[option]
        if source == click.core.ParameterSource.COMMANDLINE and given is not None:
            stored_value = getattr(stored, option)
            if str(given) != str(stored_value) and not (option == "lr" and float(given) == float(stored_value)):
                raise click.UsageError(
                    f"--{option.replace('_', '-')} {given} differs from the run's {stored_value}; "
                    "a resumed run keeps its settings (start a new --out to change them)"
                )
    changes: dict[str, object] = {"workers": workers, "log_every": log_every}
    if iters is not None:
        changes["iters"] = iters
    if val_every is not None:
        changes["val_every"] = val_every
    if save_every is not None:
        changes["save_every"] = save_every
    return stored.resumed_with(**changes)


class _StopFlag:
    """Ctrl-C asks the trainer to stop after the current iteration (saving its state) instead of killing it."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def is_set(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        say("stopping after this iteration (Ctrl-C again to abort without saving)")

    def __enter__(self) -> _StopFlag:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


class _TrainProgress:
    """A rich bar (iterations/s, ETA, losses) on a terminal; plain lines for validations and saves otherwise."""

    def __init__(self, quiet: bool, total: int) -> None:
        self.quiet = quiet
        self.total = total
        self.live = not quiet and sys.stderr.isatty()
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _TrainProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                console=Console(stderr=True), transient=True,
            )
            self.bar.start()
        return self

    def start(self, done: int) -> None:
        import time

        self._t0, self._done0 = time.perf_counter(), done
        if self.bar is not None:
            self.task = self.bar.add_task("train", total=self.total, completed=done, rate="", losses="")

    def report(self, r: Report) -> None:
        import time

        if r.kind == "warn":
            self._print(f"warning: {r.message}")
        elif self.quiet:
            return
        elif r.kind == "step" and self.task is not None:
            elapsed = time.perf_counter() - self._t0
            rate = (r.iteration - self._done0) / elapsed if elapsed > 0 else 0.0
            losses = " ".join(f"{k} {v:.4g}" for k, v in r.values.items() if k != "lr")
            self.bar.update(self.task, completed=r.iteration, rate=f"{rate:.2f} it/s", losses=losses)
        elif r.kind == "val":
            v = r.values
            self._print(f"iteration {r.iteration}: validation PSNR {v['val_psnr']:.2f} dB "
                        f"(bicubic {v['val_psnr_bicubic']:.2f} dB), SSIM {v['val_ssim']:.4f}")
        elif r.kind == "save":
            self._print(f"iteration {r.iteration}: saved {r.message}")

    def _print(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(f"esrgan: {message}", markup=False, highlight=False)
        else:
            say(message)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def register(group: click.Group) -> None:
    group.add_command(train)

