"""Everything a run needs, loaded and built: `build_trainer` is where training reads files (and may download)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from esrgan_cli.errors import TrainError
from esrgan_cli.eval.distance import UnitFeatures, distance_layers
from esrgan_cli.eval.score import pair_images
from esrgan_cli.model.arch import INIT_SCHEMES, RRDBNet
from esrgan_cli.model.vgg import Convention, PerceptualConfig, VGGFeatures, build_vgg, load_vgg_weights
from esrgan_cli.model.weights import load_weights
from esrgan_cli.training._data import ImageSet
from esrgan_cli.training._discriminator import UNetDiscriminator, VGGDiscriminator
from esrgan_cli.training._teacher import CacheKey, Teacher, TeacherCache, data_fingerprint, load_teacher
from esrgan_cli.training._trainer import Adversary, GanParts, Networks, TrainData, Trainer
from esrgan_cli.training.config import TrainConfig
from esrgan_cli.training.runtime import Distributed, Report, Reporter
from esrgan_cli.training.state import STATE_FILE, read_state


def build_trainer(config: TrainConfig, run_dir: Path, device: torch.device, *, resume: bool = False,
                  report: Reporter | None = None, dist: Distributed | None = None) -> Trainer:
    """A trainer for `config`: the training images read (unusable ones reported as warnings), the networks built
    (from --init, or the chosen initialisation) and, with `resume`, continued from `run_dir`'s state.pt. For the GAN
    stage, the VGG19 weights are read or downloaded; with --teacher, the teacher (its file's sha256 is recorded in the
    run's configuration, and checked on resume). Nothing is written: `Trainer.run` writes the run folder."""
    c = config
    dist = dist or Distributed()
    if c.precision == "fp16" and device.type != "cuda":
        raise TrainError("--precision fp16 needs a CUDA device (use bf16 or fp32)")
    if c.batch_size % dist.world:
        raise TrainError(f"the batch size {c.batch_size} must be a multiple of the {dist.world} processes")

    def warn(message: str) -> None:
        if report is not None and dist.main:
            report(Report("warn", 0, message=message))

    def setup(message: str) -> None:  # a step that may take a while, said as it starts
        if report is not None and dist.main:
            report(Report("setup", 0, message=message))

    def listed(n: int) -> None:
        setup(f"reading {n} training image{'s' if n != 1 else ''} in {c.data}…")

    images = ImageSet(Path(c.data), c.patch_size, listed=listed)
    for skipped in images.skipped:
        warn(f"skipped {skipped.path}: {skipped.reason}")
    val_pairs = pair_images(Path(c.val), None, c.model.scale) if c.val else []
    teacher = None
    if c.teacher:
        setup(f"loading the teacher {c.teacher}…")
        teacher, c = _teacher(c, images, device)

    # The order of what draws from torch's global RNG is part of a run's definition (seeded runs repeat exactly).
    torch.manual_seed(c.seed)
    m = c.model
    setup(f"building the model ({m.num_block} block{'s' if m.num_block != 1 else ''}, {m.num_feat} features, "
          f"growth {m.num_grow}, x{m.scale}{', from ' + c.init if c.init else ''})…")
    generator = RRDBNet(c.model)
    if c.init:  # the GAN stage always; the PSNR stage when fine-tuning a model (e.g. onto new degradations)
        generator.load_state_dict(_init_weights(Path(c.init), c))
    else:
        INIT_SCHEMES[c.weight_init](generator, 0.1, c.seed)
    generator.to(device)
    ema = copy.deepcopy(generator).requires_grad_(False)
    g_opt = torch.optim.Adam(generator.parameters(), lr=c.lr, betas=c.betas)
    gan = None
    if c.stage == "gan":
        setup(f"loading VGG19 for the perceptual loss ({_vgg_source(c.perceptual_weights)})…")
        vgg = _perceptual_net(c, warn).to(device)
        distance = UnitFeatures(vgg, distance_layers(c.perceptual_layer)) if c.perceptual_loss == "distance" else None
        adversary = None
        if c.gan_weight:  # --gan-weight 0: a perceptual stage, no adversary to build, train or save
            discriminator: torch.nn.Module
            if c.discriminator == "unet":
                discriminator = UNetDiscriminator(c.disc_features).to(device)
            else:
                discriminator = VGGDiscriminator(c.patch_size, c.disc_features).to(device)
            adversary = Adversary(discriminator, torch.optim.Adam(discriminator.parameters(), lr=c.lr, betas=c.betas))
        gan = GanParts(adversary, vgg, distance)
    scaler = torch.amp.GradScaler("cuda", enabled=c.precision == "fp16")

    trainer = Trainer(c, run_dir, device, Networks(generator, ema, g_opt, scaler, gan, teacher),
                      TrainData(images, val_pairs), dist=dist, report=report)
    if resume:
        setup(f"reading the resume state {Path(run_dir) / STATE_FILE}…")
        trainer.restore(read_state(Path(run_dir) / STATE_FILE))
    return trainer


def _teacher(c: TrainConfig, images: ImageSet, device: torch.device) -> tuple[Teacher, TrainConfig]:
    """The teacher, and the configuration with its sha256 recorded (a resumed run's must be the same)."""
    model, sha256 = load_teacher(str(c.teacher), c.model.scale, device)
    if c.teacher_sha256 is not None and c.teacher_sha256 != sha256:
        raise TrainError(f"the teacher {c.teacher} is not the file this run started with (sha256 {sha256[:12]}..., "
                         f"was {c.teacher_sha256[:12]}...); start a new --out to train with it")
    c = replace(c, teacher_sha256=sha256)
    cache = None
    if c.teacher_cache:
        degradation = "bicubic" if c.degradation_config is None else f"real:{c.degradation_config.digest()}"
        key = CacheKey(sha256, degradation, c.seed, c.batch_size, c.patch_size, c.model.scale,
                       data_fingerprint(images.paths, Path(c.data)))
        cache = TeacherCache(Path(c.teacher_cache), key)
    return Teacher(model, c.model.scale, cache), c


def _init_weights(path: Path, config: TrainConfig) -> dict[str, torch.Tensor]:
    weights = load_weights(path)
    if weights.config != config.model:
        raise TrainError(f"{path}: its architecture ({weights.config}) is not the run's ({config.model})")
    return weights.state_dict


def _vgg_source(weights: str) -> str:
    if weights == "hub":
        from esrgan_cli.model.vgg import VGG19_HUB

        return f"the Hub's {VGG19_HUB.repo}"
    return "random weights" if weights == "random" else weights


def _perceptual_net(c: TrainConfig, warn: Callable[[str], None]) -> VGGFeatures:
    layer = c.perceptual_layer
    if c.perceptual_weights == "random":
        warn("the perceptual loss uses a RANDOM VGG19: for tests only, the model will not learn real textures")
        torch.manual_seed(c.seed)
        return VGGFeatures(PerceptualConfig(layer, _convention(c, None)))
    if c.perceptual_weights == "hub":
        from esrgan_cli.model.hub import fetch
        from esrgan_cli.model.vgg import VGG19_HUB

        path = fetch(VGG19_HUB, "the VGG19 weights for the perceptual loss",
                     offline_hint="give --perceptual-weights PATH (a VGG19 file with torchvision key names)")
    else:
        path = Path(c.perceptual_weights)
    state, declared = load_vgg_weights(path, layer)
    return build_vgg(state, PerceptualConfig(layer, _convention(c, declared)))


def _convention(c: TrainConfig, declared: Convention | None) -> Convention:
    """--perceptual-input, else what the weights file declares, else torchvision's."""
    given = c.perceptual_input
    return given if given != "auto" else (declared or "imagenet-rgb")
