"""The two-stage ESRGAN trainer: PSNR-oriented L1 training, then the GAN fine-tune (Wang et al. 2018, §3–4).

`build_trainer` (build.py) loads and builds what a run needs; `Trainer` only trains it. One `Trainer.step` is one
iteration of either stage. `Trainer.run` writes the run folder (see state.py) and, for several processes (torchrun),
trains with DistributedDataParallel; only rank 0 writes files and reports.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from esrgan_cli.degrade.degradation import DegradationConfig, degrade, draw_batch
from esrgan_cli.errors import TrainError
from esrgan_cli.eval.distance import UnitFeatures
from esrgan_cli.eval.score import EvalPair, mean_scores, score_pairs, with_upscaler
from esrgan_cli.model.arch import RRDBNet
from esrgan_cli.model.vgg import VGGFeatures
from esrgan_cli.model.weights import LoadedWeights, save_safetensors
from esrgan_cli.training._data import ImageSet, IterationSampler, PatchPairs, RealPatches
from esrgan_cli.training._losses import (
    discriminator_loss,
    flat_patches,
    generator_gan_loss,
    levels_error,
    perceptual_term,
)
from esrgan_cli.training._teacher import Teacher, make_target
from esrgan_cli.training.config import TrainConfig
from esrgan_cli.training.runtime import Distributed, LatestLoss, Report, Reporter
from esrgan_cli.training.state import STATE_FILE, TrainState, append_log, trim_log, write_config, write_state
from esrgan_cli.upscale.device import Placement
from esrgan_cli.upscale.upscaler import Upscaler

VAL_OVERLAP = 32
_Sample = TypeVar("_Sample")


@dataclass
class Adversary:
    """The discriminator (VGG or U-Net) and its optimizer."""

    discriminator: nn.Module
    opt: torch.optim.Optimizer


@dataclass
class GanParts:
    """What the GAN stage adds: the adversary (none with --gan-weight 0) and the perceptual loss's feature network,
    read through `distance` with --perceptual-loss distance."""

    adversary: Adversary | None
    vgg: VGGFeatures
    distance: UnitFeatures | None = None


@dataclass
class Networks:
    """The networks being trained, with their optimizers, on the run's device."""

    generator: RRDBNet
    ema: RRDBNet  # the exponential moving average of `generator`: what is saved as the model
    g_opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gan: GanParts | None = None
    teacher: Teacher | None = None  # distillation: its output is the target


@dataclass(frozen=True)
class TrainData:
    images: ImageSet
    val_pairs: list[EvalPair]


class LossWindow:
    """The loss terms of the iterations since the last log line, summed on the device: reading them back is a device
    sync, so it happens once per log line (and before a save), not once per step."""

    def __init__(self, start: int) -> None:
        self.start = start  # the iteration before the first one summed
        self.keys: list[str] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([t.float() for t in terms.values()])
        self.keys = list(terms)
        self.total = values if self.total is None else self.total + values
        self.count += 1

    def means(self, ctx: Distributed) -> dict[str, float]:
        """The means over the window and over processes (the loss of the whole batch): one sync."""
        if self.total is None:
            return {}
        total = ctx.all_sum(self.total.clone())
        return dict(zip(self.keys, (total / (self.count * ctx.world)).tolist(), strict=True))


class Trainer:
    """Trains what it is given; constructing one reads and writes nothing (see `build_trainer`)."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, nets: Networks, data: TrainData,
                 *, dist: Distributed | None = None, report: Reporter | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = device
        self.dist = dist or Distributed()
        self._report = report if self.dist.main else None
        self.data = data
        self.generator, self.ema, self.g_opt, self.scaler = nets.generator, nets.ema, nets.g_opt, nets.scaler
        self.gan = nets.gan
        self.teacher = nets.teacher
        self.adversary = nets.gan.adversary if nets.gan else None
        self.discriminator = self.adversary.discriminator if self.adversary else None
        # What the steps run: the networks themselves, or their DistributedDataParallel wrappers after `begin`.
        self.g_train: nn.Module = self.generator
        self.d_train: nn.Module | None = self.discriminator
        self.iteration = 0
        self.last_val: dict[str, float] = {}
        self._begun = False

    def restore(self, state: TrainState) -> None:
        """Continue from a saved state: weights, EMA, optimizer moments, loss scale, RNG and iteration."""
        self.iteration = state["iteration"]
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.adversary is not None:
            if "discriminator" not in state or "d_opt" not in state:
                raise TrainError(f"{self.run_dir / STATE_FILE}: not the state of a GAN-stage run")
            self.adversary.discriminator.load_state_dict(state["discriminator"])
            self.adversary.opt.load_state_dict(state["d_opt"])

    def state(self) -> TrainState:
        state = TrainState(
            iteration=self.iteration, config=self.config.to_json(), generator=self.generator.state_dict(),
            ema=self.ema.state_dict(), g_opt=self.g_opt.state_dict(), scaler=self.scaler.state_dict(),
            torch_rng=torch.get_rng_state(),
        )
        if self.adversary is not None:
            state["discriminator"] = self.adversary.discriminator.state_dict()
            state["d_opt"] = self.adversary.opt.state_dict()
        return state

    def begin(self) -> None:
        """Start the run: its folder with config.json, the log cut back to the iteration resumed from, and the
        networks wrapped for DistributedDataParallel. `run` calls it; once is enough."""
        if self._begun:
            return
        self._begun = True
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_train = DistributedDataParallel(self.generator, device_ids=ids)
            if self.discriminator is not None:
                self.d_train = DistributedDataParallel(self.discriminator, device_ids=ids)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, self.config)
            trim_log(self.run_dir, self.iteration)

    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(LR, HR) batches of this process from the current iteration on. With the real degradation, the loader's
        workers crop and draw, and the LR is made here, on the device."""
        c = self.config
        real = c.degradation_config
        if real is None:
            return iter(self._batches(PatchPairs(self.data.images, c.patch_size, c.model.scale, c.seed)))
        patches = RealPatches(self.data.images, c.patch_size, c.model.scale, c.seed, real)
        return self._degraded(self._batches(patches), real, self.iteration)

    def _batches(self, dataset: Dataset[_Sample]) -> DataLoader[_Sample]:
        c = self.config
        sampler = IterationSampler(self.iteration, c.iters, c.batch_size, self.dist.rank, self.dist.world)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=c.workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _degraded(self, loader: DataLoader[tuple[torch.Tensor, dict[str, torch.Tensor]]], real: DegradationConfig,
                  start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for iteration, (hr, draws) in enumerate(loader, start=start):
            hr = hr.to(self.device, non_blocking=True)
            batch = draw_batch(real, self.config.seed, iteration)
            yield degrade(hr, draws, batch, self.config.model.scale), hr

    # -- one iteration -------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        p = self.config.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def step(self, lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training iteration on a batch of this process (samples iteration·batch + rank·local, ...); returns its
        loss terms as detached tensors on the device (reading them would wait for the device, so the caller decides
        when)."""
        lr_img = lr_img.to(self.device, non_blocking=True)
        hr_img = hr_img.to(self.device, non_blocking=True)
        rate = self.config.lr_at(self.iteration)
        for opt in (self.g_opt, self.adversary.opt if self.adversary else None):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = rate
        c = self.config
        first = self.iteration * c.batch_size + self.dist.rank * (c.batch_size // self.dist.world)
        target = make_target(lr_img, hr_img, sharpen=c.sharpen_gt, teacher=self.teacher, weight=c.teacher_weight,
                             first=first)
        if self.gan is None:
            with self._autocast():
                sr, l_levels = self._generate(lr_img)
                loss = l_pix = F.l1_loss(sr, target)
                if l_levels is not None:
                    loss = l_pix + c.levels_weight * l_levels
            self._update(self.g_opt, loss)
            terms = {"loss": loss.detach(), "l1": l_pix.detach()}
            if l_levels is not None:
                terms["levels"] = l_levels.detach()
        else:
            terms = self._gan_step(self.gan, lr_img, hr_img, target)
        self.scaler.update()
        self._update_ema()
        self.iteration += 1
        return terms

    def _generate(self, lr_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The generator's output, and with --levels-weight the levels error of flat patches run in the same forward
        pass (DistributedDataParallel expects one per backward)."""
        if not self.config.levels_weight:
            return self.g_train(lr_img).float(), None
        flats = flat_patches(self.iteration, lr_img)
        out = self.g_train(torch.cat([lr_img, flats])).float()
        return out[: len(lr_img)], levels_error(out[len(lr_img):], flats)

    def _gan_step(self, gan: GanParts, lr_img: torch.Tensor, hr_img: torch.Tensor,
                  target: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        d_train = self.d_train  # the discriminator, or its DistributedDataParallel wrapper; None without one
        # Generator: L_G = L_percep + λ·L_G^Ra + η·L_1. C(x_r) carries no gradient to G, so it is detached. The L1 and
        # perceptual terms compare with the target (HR, sharpened HR or the teacher's); the discriminator's real
        # images are always the HR patches.
        with self._autocast():
            sr, l_levels = self._generate(lr_img)
            l_pix = F.l1_loss(sr, target)
            l_per = perceptual_term(gan.vgg, gan.distance, sr, target)
            g_loss = c.pixel_weight * l_pix + c.perceptual_weight * l_per
            if l_levels is not None:
                g_loss = g_loss + c.levels_weight * l_levels
            if d_train is not None:
                d_train.requires_grad_(False)
                real = d_train(hr_img).float().detach()
                fake = d_train(sr).float()
                l_gan = generator_gan_loss(real, fake)
                g_loss = g_loss + c.gan_weight * l_gan
        self._update(self.g_opt, g_loss)
        terms = {"loss": g_loss.detach(), "l1": l_pix.detach(), "perceptual": l_per.detach()}
        if l_levels is not None:
            terms["levels"] = l_levels.detach()
        if d_train is None or self.adversary is None:  # --gan-weight 0: a perceptual stage, no adversary to train
            return terms
        # Discriminator: both scores carry gradient to D; only the generated image is detached.
        d_train.requires_grad_(True)
        with self._autocast():
            real = d_train(hr_img).float()
            fake = d_train(sr.detach()).float()
            d_loss = discriminator_loss(real, fake)
        self._update(self.adversary.opt, d_loss)
        return {**terms, "gan": l_gan.detach(), "d_loss": d_loss.detach(), "d_real": real.detach().mean(),
                "d_fake": fake.detach().mean()}

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (as TensorFlow's ExponentialMovingAverage): early on the average follows the model closely,
        # so short runs are not dominated by the random initialisation.
        t = self.iteration
        decay = min(self.config.ema_decay, (1 + t) / (10 + t))
        for e, p in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            e.lerp_(p, 1 - decay)

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Train up to `config.iters`; returns False when stopped early (the state is saved first)."""
        c = self.config
        self.begin()
        window = LossWindow(self.iteration)
        latest = LatestLoss()
        for lr_img, hr_img in self._loader():
            terms = self.step(lr_img, hr_img)
            window.add(terms)
            it = self.iteration
            if self._report is not None:
                loss = latest.push(terms["loss"])
                self._emit(Report("tick", it, {} if loss is None else {"loss": loss}))
            stop = should_stop() and it < c.iters
            log_now = it % c.log_every == 0 or it == c.iters
            val_now = bool(self.data.val_pairs) and (it % c.val_every == 0 or it == c.iters)
            save_now = it % c.save_every == 0 or it == c.iters
            if not (log_now or val_now or save_now or stop):
                continue
            # Reading the losses waits for the device, so it happens only here; a non-finite loss stops the run
            # before anything is validated, logged or saved.
            means = self._finite(window)
            if log_now:
                self._log({"iter": it, **means, "lr": c.lr_at(it - 1)}, "step")
                window = LossWindow(it)
            if val_now:
                self.validate()
            if save_now or stop:
                self.save(model=save_now)
            if stop:
                return False
        return True

    def _finite(self, window: LossWindow) -> dict[str, float]:
        """The window's mean loss terms (over its iterations and the processes); a non-finite one stops the run."""
        means = window.means(self.dist)
        if not all(math.isfinite(v) for v in means.values()):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
            raise TrainError(f"the loss is not finite in iterations {window.start + 1}..{self.iteration} ({shown}); "
                             "lower --lr or use --precision fp32")
        return means

    def validate(self) -> dict[str, float]:
        """Y-PSNR of the EMA model on the validation images, beside bicubic; logged on rank 0."""
        values: dict[str, float] = {}
        if self.dist.main:
            weights = LoadedWeights(self.ema.state_dict(), self.config.model, {}, Path("<ema>"), torch.float32)
            upscaler = Upscaler(weights, Placement(self.device, torch.float32, ""))
            upscale = with_upscaler(upscaler, None, VAL_OVERLAP)
            summary = mean_scores(list(score_pairs(self.data.val_pairs, upscale, self.config.model.scale)))
            values = {"val_psnr": summary.psnr, "val_psnr_bicubic": summary.psnr_bicubic,
                      "val_ssim": summary.ssim}
            self._log({"iter": self.iteration, **values}, "val")
            self.last_val = values
        self.dist.barrier()
        return values

    def save(self, model: bool = True) -> None:
        """The resume state, and (unless `model` is False) the EMA model of this iteration."""
        if self.dist.main:
            it = self.iteration
            if model:
                meta = {"esrgan.stage": self.config.stage, "esrgan.iteration": str(it),
                        "esrgan.train_config": self.config.to_json()}
                if self.last_val:
                    meta["esrgan.val_psnr"] = f"{self.last_val['val_psnr']:.4f}"
                    meta["esrgan.val_psnr_bicubic"] = f"{self.last_val['val_psnr_bicubic']:.4f}"
                path = self.run_dir / f"model_{it}.safetensors"
                save_safetensors(self.ema.state_dict(), self.config.model, path, meta)
                self._emit(Report("save", it, message=str(path)))
            write_state(self.run_dir / STATE_FILE, self.state())
        self.dist.barrier()

    def _log(self, entry: dict[str, float], kind: Literal["step", "val"]) -> None:
        if self.dist.main:
            append_log(self.run_dir, entry)
            values = {k: v for k, v in entry.items() if k != "iter"}
            self._emit(Report(kind, self.iteration, values))

    def _emit(self, report: Report) -> None:
        if self._report is not None:
            self._report(report)
