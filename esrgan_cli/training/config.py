"""What a training run is: a frozen configuration, stored in the run folder so `--resume` continues the same run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

from esrgan_cli.degrade.degradation import DegradationConfig
from esrgan_cli.model.arch import INIT_SCHEMES, RRDBConfig
from esrgan_cli.model.vgg import LAYERS, VGGLayer

Stage = Literal["psnr", "gan"]
Precision = Literal["fp32", "bf16", "fp16"]
WeightInit = Literal["interp", "paper"]  # the names of arch.INIT_SCHEMES
PerceptualInput = Literal["auto", "imagenet-rgb", "caffe-bgr"]  # auto: what the weights file declares
Degradation = Literal["bicubic", "real"]  # real: Real-ESRGAN's high-order model (degradation.py)
Discriminator = Literal["vgg", "unet"]
# l1: ESRGAN's L1 of one layer's features before ReLU; distance: the eval's perceptual distance (unit-normalised
# features after ReLU at LPIPS's layers up to --perceptual-layer).
PerceptualLoss = Literal["l1", "distance"]

STAGES: tuple[Stage, ...] = get_args(Stage)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
WEIGHT_INITS: tuple[WeightInit, ...] = get_args(WeightInit)
PERCEPTUAL_INPUTS: tuple[PerceptualInput, ...] = get_args(PerceptualInput)
DEGRADATIONS: tuple[Degradation, ...] = get_args(Degradation)
DISCRIMINATORS: tuple[Discriminator, ...] = get_args(Discriminator)
PERCEPTUAL_LOSSES: tuple[PerceptualLoss, ...] = get_args(PerceptualLoss)
# The U-Net discriminator halves the patch three times; the VGG one five times.
DISCRIMINATOR_MULTIPLE = {"vgg": 32, "unet": 8}

# The paper halves the learning rate every 2e5 of 1e6 iterations (PSNR stage) and at 50k/100k/200k/300k of 400k
# (GAN stage). Runs of other lengths keep the same shape: the milestones are these fractions of --iters.
MILESTONE_FRACTIONS = {"psnr": (0.2, 0.4, 0.6, 0.8), "gan": (0.125, 0.25, 0.5, 0.75)}
DEFAULT_LR = {"psnr": 2e-4, "gan": 1e-4}
# Not in the paper. Adam's first steps move every weight by about the full learning rate whatever its gradient, which
# wrecks the interpolating start (one step at 2e-4 took a 4-block model's L1 from 0.046 to 0.41); ramping the rate up
# over the first tenth of the run (at most this many iterations) keeps it.
WARMUP_CAP = 1000

# Fields that may differ when a run is resumed: they change how long, how visibly and where it runs, and what it
# measures, not what it computes (the teacher's cached targets are the very values it would compute again; the
# validation images are only scored). Every other field is the run's definition and stays as it started.
RESUMABLE_FIELDS = ("iters", "val", "val_every", "save_every", "log_every", "workers", "device", "teacher_cache")


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage
    data: str
    iters: int
    model: RRDBConfig = field(default_factory=lambda: RRDBConfig(num_block=23))
    val: str | None = None
    batch_size: int = 16
    patch_size: int = 128  # HR side
    lr: float = 0.0  # 0: the stage's default
    milestones: tuple[int, ...] | None = None  # None: the paper's, scaled to `iters`
    warmup: int | None = None  # iterations of linear learning-rate warm-up; None: the stage's default
    betas: tuple[float, float] = (0.9, 0.99)
    ema_decay: float = 0.999
    weight_init: WeightInit = "interp"  # see arch.INIT_SCHEMES; "paper" is the paper's random start
    val_every: int = 1000
    save_every: int = 1000
    log_every: int = 10
    seed: int = 0
    workers: int = 0
    precision: Precision = "fp32"
    device: str = "auto"  # as given (auto, cpu, cuda, cuda:N, mps): a resumed run keeps it unless given another
    # GAN stage
    init: str | None = None
    perceptual_weights: str = "hub"
    perceptual_layer: VGGLayer = "conv5_4"
    perceptual_input: PerceptualInput = "auto"
    pixel_weight: float = 1e-2
    perceptual_weight: float = 1.0
    perceptual_loss: PerceptualLoss = "l1"
    gan_weight: float = 5e-3
    disc_features: int = 64
    discriminator: Discriminator = "vgg"
    # Real-world training (Real-ESRGAN) and distillation
    degradation: Degradation = "bicubic"
    degradation_config: DegradationConfig | None = None  # the real degradation's settings; None: bicubic
    sharpen_gt: bool = False  # unsharp-masked HR as the L1 and perceptual target (Real-ESRGAN)
    teacher: str | None = None  # a model (name, file or hf:) whose output on the LR is the target
    teacher_sha256: str | None = None  # its file's, recorded when the run starts: a resume checks it is unchanged
    teacher_weight: float = 1.0  # target = w·teacher + (1 - w)·HR
    levels_weight: float = 0.0  # L1 keeping flat black, white and gray patches at their level
    teacher_cache: str | None = None  # a folder for the teacher's outputs

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        # The Literal types hold for the type checker only: JSON from an older or edited run folder is checked here.
        if self.weight_init not in WEIGHT_INITS or self.weight_init not in INIT_SCHEMES:
            raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {self.weight_init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.perceptual_input not in PERCEPTUAL_INPUTS:
            raise ValueError(f"perceptual_input must be one of {', '.join(PERCEPTUAL_INPUTS)}, "
                             f"got {self.perceptual_input!r}")
        if self.perceptual_loss not in PERCEPTUAL_LOSSES:
            raise ValueError(f"perceptual_loss must be one of {', '.join(PERCEPTUAL_LOSSES)}, "
                             f"got {self.perceptual_loss!r}")
        if self.perceptual_layer not in LAYERS:
            raise ValueError(f"unknown VGG19 layer {self.perceptual_layer!r} (use one of {', '.join(LAYERS)})")
        for name in ("iters", "batch_size", "patch_size", "val_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.patch_size % self.model.scale:
            raise ValueError(f"the patch size {self.patch_size} must be a multiple of the scale {self.model.scale}")
        if self.stage == "gan":
            if not self.init:
                raise ValueError("the GAN stage starts from a PSNR-stage model: give --init")
            multiple = DISCRIMINATOR_MULTIPLE.get(self.discriminator, 32)
            if self.gan_weight and self.patch_size % multiple:  # --gan-weight 0 builds no discriminator
                raise ValueError(f"the GAN stage with the {self.discriminator} discriminator needs a patch size that "
                                 f"is a multiple of {multiple}, got {self.patch_size}")
        self._check_real_world()
        if self.lr == 0.0:
            object.__setattr__(self, "lr", DEFAULT_LR[self.stage])
        if self.warmup is None:
            object.__setattr__(self, "warmup", min(WARMUP_CAP, self.iters // 10) if self.stage == "psnr" else 0)
        elif self.warmup < 0:
            raise ValueError(f"warmup must not be negative, got {self.warmup}")
        if self.milestones is None:
            fractions = MILESTONE_FRACTIONS[self.stage]
            object.__setattr__(self, "milestones", tuple(max(1, round(f * self.iters)) for f in fractions))
        else:
            object.__setattr__(self, "milestones", tuple(sorted(self.milestones)))

    def _check_real_world(self) -> None:
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"discriminator must be one of {', '.join(DISCRIMINATORS)}, got {self.discriminator!r}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {self.degradation!r}")
        if self.degradation == "real" and self.degradation_config is None:
            object.__setattr__(self, "degradation_config", DegradationConfig())
        elif self.degradation == "bicubic" and self.degradation_config is not None:
            raise ValueError("degradation settings are for the real degradation (--degradation real)")
        if self.levels_weight < 0:
            raise ValueError(f"the levels weight must be at least 0, got {self.levels_weight}")
        if not 0 <= self.teacher_weight <= 1:
            raise ValueError(f"the teacher's weight must be in 0..1, got {self.teacher_weight}")
        if self.teacher is None and (self.teacher_weight != 1 or self.teacher_cache or self.teacher_sha256):
            raise ValueError("--teacher-weight and --teacher-cache need a --teacher")
        if self.sharpen_gt and self.teacher is not None and self.teacher_weight == 1:
            raise ValueError("--sharpen-gt sharpens the HR part of the target, and with --teacher-weight 1 there is "
                             "none: lower the teacher's weight or drop --sharpen-gt")

    def lr_at(self, iteration: int) -> float:
        """The learning rate of step `iteration` (0-based): ramped up linearly over the warm-up, and halved at every
        milestone already passed."""
        passed = sum(1 for m in self.milestones or () if iteration >= m)
        ramp = min(1.0, (iteration + 1) / self.warmup) if self.warmup else 1.0
        return self.lr * 0.5**passed * ramp

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        data["model"] = RRDBConfig(**data["model"])
        if data.get("degradation_config") is not None:
            data["degradation_config"] = DegradationConfig.from_dict(data["degradation_config"])
        for key in ("milestones", "betas"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def resumed_with(self, **changes: object) -> TrainConfig:
        """This run's configuration with the fields a resume may change replaced."""
        unknown = set(changes) - set(RESUMABLE_FIELDS)
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))} when resuming")
        return replace(self, **changes)  # type: ignore[arg-type]
