"""The two-stage ESRGAN trainer: PSNR-oriented L1 training, then the GAN fine-tune (Wang et al. 2018, §3–4).

One `Trainer.step` is one iteration of either stage. A run folder holds `config.json`, `log.jsonl`, the EMA model as
`model_<iter>.safetensors`, and `state.pt`: everything needed to continue bit for bit (weights, EMA, optimizer
moments, iteration; the data stream is a function of the seed and the iteration, see data.py).
Several processes (torchrun) train with DistributedDataParallel; only rank 0 writes files and reports.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from esrgan_cli.arch import INIT_SCHEMES, RRDBNet
from esrgan_cli.atomic import atomic_write
from esrgan_cli.engine import Placement, Upscaler
from esrgan_cli.errors import EsrganError
from esrgan_cli.evaluate import pair_images, score_pairs, summarize, with_upscaler
from esrgan_cli.training.config import TrainConfig
from esrgan_cli.training.data import ImageSet, IterationSampler, PatchPairs
from esrgan_cli.training.discriminator import VGGDiscriminator
from esrgan_cli.training.perceptual import PerceptualConfig, VGGFeatures, build_vgg, load_vgg_weights, perceptual_loss
from esrgan_cli.weights import LoadedWeights, load_weights, save_safetensors

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
VAL_OVERLAP = 32


class TrainError(EsrganError):
    """A run cannot start or continue."""


@dataclass(frozen=True)
class Report:
    """Something the user may want to see; the CLI decides how."""

    kind: str  # "step", "val", "save", "warn"
    iteration: int
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""


Reporter = Callable[[Report], None]


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """torchrun's environment, or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device, resume: bool = False,
                 report: Reporter | None = None, dist_ctx: Distributed | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = device
        self.dist = dist_ctx or Distributed()
        self._report = report if self.dist.main else None
        c = config
        if c.precision == "fp16" and device.type != "cuda":
            raise TrainError("--precision fp16 needs a CUDA device (use bf16 or fp32)")
        if c.batch_size % self.dist.world:
            raise TrainError(f"the batch size {c.batch_size} must be a multiple of the {self.dist.world} processes")
        self.images = ImageSet(Path(c.data), c.patch_size)
        for skipped in self.images.skipped:
            self._emit(Report("warn", 0, message=f"skipped {skipped.path}: {skipped.reason}"))
        self.val_pairs = pair_images(Path(c.val), None, c.model.scale) if c.val else []

        torch.manual_seed(c.seed)
        self.generator = RRDBNet(c.model)
        if c.stage == "psnr":
            INIT_SCHEMES[c.weight_init](self.generator, 0.1, c.seed)
        else:
            self.generator.load_state_dict(self._init_weights(Path(str(c.init))))
        self.generator.to(device)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=c.betas)
        self.discriminator: nn.Module | None = None
        self.d_opt: torch.optim.Optimizer | None = None
        self.vgg: VGGFeatures | None = None
        if c.stage == "gan":
            self.vgg = self._perceptual_net().to(device)
            self.discriminator = VGGDiscriminator(c.patch_size, c.disc_features).to(device)
            self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=c.betas)
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.precision == "fp16")
        self.iteration = 0
        self.last_val: dict[str, float] = {}
        if resume:
            self._load_state()
        self.g_train: nn.Module = self.generator
        self.d_train: nn.Module | None = self.discriminator
        if self.dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.g_train = DistributedDataParallel(self.generator, device_ids=ids)
            if self.discriminator is not None:
                self.d_train = DistributedDataParallel(self.discriminator, device_ids=ids)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.run_dir / CONFIG_FILE) as tmp:
                tmp.write_text(json.dumps(json.loads(c.to_json()), indent=2) + "\n", encoding="utf-8")
            self._trim_log()

    # -- setup ---------------------------------------------------------------------------------------------

    def _init_weights(self, path: Path) -> dict[str, torch.Tensor]:
        weights = load_weights(path)
        if weights.config != self.config.model:
            raise TrainError(f"{path}: its architecture ({weights.config}) is not the run's ({self.config.model})")
        return weights.state_dict

    def _perceptual_net(self) -> VGGFeatures:
        c = self.config
        layer = c.perceptual_layer
        if c.perceptual_weights == "random":
            self._emit(Report("warn", 0, message=(
                "the perceptual loss uses a RANDOM VGG19: for tests only, the model will not learn real textures")))
            torch.manual_seed(c.seed)
            return VGGFeatures(PerceptualConfig(layer, self._convention(None)))
        if c.perceptual_weights == "hub":
            from esrgan_cli.registry import fetch
            from esrgan_cli.training.perceptual import VGG19_HUB

            path = fetch(VGG19_HUB, "the VGG19 weights for the perceptual loss",
                         offline_hint="give --perceptual-weights PATH (a VGG19 file with torchvision key names)")
        else:
            path = Path(c.perceptual_weights)
        state, declared = load_vgg_weights(path, layer)
        return build_vgg(state, PerceptualConfig(layer, self._convention(declared)))

    def _convention(self, declared: str | None) -> str:
        """--perceptual-input, else what the weights file declares, else torchvision's."""
        given = self.config.perceptual_input
        return given if given != "auto" else (declared or "imagenet-rgb")

    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        c = self.config
        pairs = PatchPairs(self.images, c.patch_size, c.model.scale, c.seed)
        sampler = IterationSampler(self.iteration, c.iters, c.batch_size, self.dist.rank, self.dist.world)
        loader = DataLoader(pairs, batch_sampler=sampler, num_workers=c.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        return iter(loader)

    # -- one iteration -------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        p = self.config.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def step(self, lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, float]:
        """One training iteration; returns this process's loss terms."""
        c = self.config
        lr_img = lr_img.to(self.device, non_blocking=True)
        hr_img = hr_img.to(self.device, non_blocking=True)
        rate = c.lr_at(self.iteration)
        for opt in (self.g_opt, self.d_opt):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = rate
        if c.stage == "psnr":
            with self._autocast():
                loss = F.l1_loss(self.g_train(lr_img).float(), hr_img)
            self._update(self.g_opt, loss)
            values = {"loss": float(loss.detach()), "l1": float(loss.detach())}
        else:
            values = self._gan_step(lr_img, hr_img)
        self.scaler.update()
        self._update_ema()
        self.iteration += 1
        values["lr"] = rate
        return values

    def _gan_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, float]:
        c = self.config
        assert self.d_train is not None and self.d_opt is not None and self.vgg is not None
        # Generator: L_G = L_percep + λ·L_G^Ra + η·L_1. C(x_r) carries no gradient to G, so it is detached.
        self.d_train.requires_grad_(False)
        with self._autocast():
            sr = self.g_train(lr_img).float()
            l_pix = F.l1_loss(sr, hr_img)
            l_per = perceptual_loss(self.vgg, sr, hr_img)
            real = self.d_train(hr_img).float().detach()
            fake = self.d_train(sr).float()
            # The original ESRGAN code averages the two relativistic terms; λ = 5e-3 was tuned with that.
            l_gan = (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0)) / 2
            g_loss = c.pixel_weight * l_pix + c.perceptual_weight * l_per + c.gan_weight * l_gan
        self._update(self.g_opt, g_loss)
        # Discriminator: both scores carry gradient to D; only the generated image is detached.
        self.d_train.requires_grad_(True)
        with self._autocast():
            real = self.d_train(hr_img).float()
            fake = self.d_train(sr.detach()).float()
            d_loss = (_bce(real - fake.mean(), 1.0) + _bce(fake - real.mean(), 0.0)) / 2
        self._update(self.d_opt, d_loss)
        return {
            "loss": float(g_loss.detach()), "l1": float(l_pix.detach()), "perceptual": float(l_per.detach()),
            "gan": float(l_gan.detach()), "d_loss": float(d_loss.detach()),
            "d_real": float(real.detach().mean()), "d_fake": float(fake.detach().mean()),
        }

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
        sums: dict[str, float] = {}
        count = 0
        for lr_img, hr_img in self._loader():
            values = self.step(lr_img, hr_img)
            if not finite(values):
                raise TrainError(f"the loss is not finite at iteration {self.iteration} ({values}); "
                                 "lower --lr or use --precision fp32")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            it = self.iteration
            if it % c.log_every == 0 or it == c.iters:
                means = self._all_mean({k: v / count for k, v in sums.items()})
                means["lr"] = values["lr"]
                self._log({"iter": it, **means})
                self._emit(Report("step", it, means))
                sums, count = {}, 0
            if self.val_pairs and (it % c.val_every == 0 or it == c.iters):
                self.validate()
            if it % c.save_every == 0 or it == c.iters:
                self.save()
            if should_stop() and it < c.iters:
                self.save(model=False)
                return False
        return True

    def validate(self) -> dict[str, float]:
        """Y-PSNR of the EMA model on the validation images, beside bicubic; logged on rank 0."""
        values: dict[str, float] = {}
        if self.dist.main:
            weights = LoadedWeights(self.ema.state_dict(), self.config.model, {}, Path("<ema>"), torch.float32)
            upscaler = Upscaler(weights, Placement(self.device, torch.float32, ""))
            upscale = with_upscaler(upscaler, None, VAL_OVERLAP)
            summary = summarize(list(score_pairs(self.val_pairs, upscale, self.config.model.scale)))
            values = {"val_psnr": summary.psnr, "val_psnr_bicubic": summary.psnr_bicubic,
                      "val_ssim": summary.ssim}
            self._log({"iter": self.iteration, **values})
            self._emit(Report("val", self.iteration, values))
            self.last_val = values
        self._barrier()
        return values

    # -- files ---------------------------------------------------------------------------------------------

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
            state = {
                "iteration": it, "config": self.config.to_json(),
                "generator": self.generator.state_dict(), "ema": self.ema.state_dict(),
                "g_opt": self.g_opt.state_dict(), "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            if self.discriminator is not None and self.d_opt is not None:
                state["discriminator"] = self.discriminator.state_dict()
                state["d_opt"] = self.d_opt.state_dict()
            with atomic_write(self.run_dir / STATE_FILE) as tmp:
                torch.save(state, tmp)
        self._barrier()

    def _load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        state = read_state(path)
        self.iteration = int(state["iteration"])
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.discriminator is not None and self.d_opt is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_opt.load_state_dict(state["d_opt"])

    def _trim_log(self) -> None:
        """Drop log lines past the state being resumed from (written after the last save of a crashed run)."""
        path = self.run_dir / LOG_FILE
        if not path.exists():
            return
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("iter", 0) <= self.iteration]
        if len(keep) != len(lines):
            with atomic_write(path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")

    def _log(self, entry: dict[str, float | int]) -> None:
        if self.dist.main:
            with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({k: (round(v, 7) if isinstance(v, float) else v) for k, v in entry.items()})
                        + "\n")

    # -- helpers -------------------------------------------------------------------------------------------

    def _emit(self, report: Report) -> None:
        if self._report is not None:
            self._report(report)

    def _all_mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over processes, so the log shows the loss of the whole batch."""
        if self.dist.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.dist.world for k, v in zip(keys, t.tolist(), strict=True)}

    def _barrier(self) -> None:
        if self.dist.world > 1:
            dist.barrier()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def read_state(path: Path) -> dict[str, object]:
    """A run's resume state (tensors and plain data only: loaded with weights_only)."""
    if not path.is_file():
        raise TrainError(f"{path.parent}: nothing to resume (no {path.name})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged state file is one user-facing error, whatever the reader says
        raise TrainError(f"{path}: cannot read the resume state ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or "iteration" not in state:
        raise TrainError(f"{path}: not an esrgan resume state")
    return state


def stored_config(run_dir: Path) -> TrainConfig:
    """The configuration a run folder was started with (for --resume)."""
    state = read_state(Path(run_dir) / STATE_FILE)
    return TrainConfig.from_json(str(state["config"]))


def init_distributed(ctx: Distributed, device: torch.device) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo on CPU."""
    if ctx.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in values.values())
