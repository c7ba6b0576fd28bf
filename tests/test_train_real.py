"""Real-world training: the real degradation in the trainer, distillation from a teacher and its cache, sharpened
targets, the U-Net discriminator, exact resume (also after Ctrl-C), and the command line's checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli import assert_one_line_error, esrgan
from test_train import TINY_ARGS, _config, _write_images, assert_error_after_setup

from esrgan_cli.cli import train_real
from esrgan_cli.degrade.degradation import DegradationConfig
from esrgan_cli.degrade.kernels import unsharp_mask
from esrgan_cli.errors import TrainError
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import save_safetensors
from esrgan_cli.training._discriminator import UNetDiscriminator
from esrgan_cli.training._teacher import CacheKey, Teacher, TeacherCache, make_target
from esrgan_cli.training.build import build_trainer
from esrgan_cli.training.config import Degradation, Discriminator, TrainConfig

from conftest import ROOT, WAIT_S, default_sigint, tiny_model, wait_until

CPU = torch.device("cpu")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return _write_images(tmp_path / "data", 6)


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    """A tiny x4 model with lively outputs: a target the student has to learn."""
    model = tiny_model(seed=5)
    path = tmp_path / "teacher.safetensors"
    save_safetensors(model.state_dict(), model.config, path)
    return path


def _real(images: Path, teacher: Path | None, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(degradation="real", teacher=str(teacher) if teacher else None)
    return _config(images, **{**base, **kw})


def _losses(run: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in e]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: Path, b: Path) -> bool:
    ta, tb = _weights(a), _weights(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_the_command_lines_choices_are_the_configs_literal_types() -> None:
    assert train_real.DEGRADATION_CHOICES == get_args(Degradation)
    assert train_real.DISCRIMINATOR_CHOICES == get_args(Discriminator)


def test_a_distilled_real_world_run_learns_and_a_warm_cache_replays_it(tmp_path: Path, images: Path,
                                                                      teacher: Path) -> None:
    cache = tmp_path / "cache"
    config = _real(images, teacher, iters=40, lr=2e-3, weight_init="paper", log_every=5, save_every=40,
                   teacher_cache=str(cache))
    first = build_trainer(config, tmp_path / "a", CPU)
    assert first.config.teacher_sha256 and first.config.degradation_config == DegradationConfig()
    assert first.run()
    losses = _losses(tmp_path / "a")
    print(f"\ndistillation loss every 5 iterations: {[round(x, 4) for x in losses]}")
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])
    assert first.teacher is not None and first.teacher.cache is not None
    assert (first.teacher.cache.hits, first.teacher.cache.misses) == (0, 40)
    (folder,) = cache.iterdir()
    assert len(list(folder.glob("*.npy"))) == 40 and json.loads((folder / "key.json").read_text())["seed"] == 3
    # The same run again reads every target from the cache and ends with the same weights, bit for bit.
    again = build_trainer(config, tmp_path / "b", CPU)
    assert again.run()
    assert again.teacher is not None and again.teacher.cache is not None
    assert (again.teacher.cache.hits, again.teacher.cache.misses) == (40, 0)
    assert _same(tmp_path / "a" / "model_40.safetensors", tmp_path / "b" / "model_40.safetensors")
    # Other degradation settings, seed or teacher weight... name another folder (the weight mixes after the cache).
    other = build_trainer(replace(config, degradation_config=DegradationConfig(final_sinc_prob=0.5)), tmp_path / "c",
                          CPU)
    assert other.teacher is not None and other.teacher.cache is not None
    assert other.teacher.cache.folder != folder


def test_a_crashed_run_resumes_from_its_state_reusing_the_cached_targets(tmp_path: Path, images: Path,
                                                                         teacher: Path) -> None:
    config = _real(images, teacher, iters=16, save_every=8, log_every=4, teacher_weight=0.7, sharpen_gt=True)
    straight = build_trainer(config, tmp_path / "straight", CPU)
    assert straight.run()
    cached = replace(config, teacher_cache=str(tmp_path / "cache"))
    crashing = build_trainer(cached, tmp_path / "cut", CPU)
    step = crashing.step

    def crash_at_12(lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, torch.Tensor]:
        if crashing.iteration == 12:
            raise RuntimeError("power cut")
        return step(lr_img, hr_img)

    crashing.step = crash_at_12  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="power cut"):
        crashing.run()
    # The state is from iteration 8; the cache holds the targets of iterations 0..11.
    resumed = build_trainer(cached, tmp_path / "cut", CPU, resume=True)
    assert resumed.iteration == 8
    assert resumed.run()
    assert resumed.teacher is not None and resumed.teacher.cache is not None
    assert (resumed.teacher.cache.hits, resumed.teacher.cache.misses) == (4, 4)
    assert _same(tmp_path / "straight" / "model_16.safetensors", tmp_path / "cut" / "model_16.safetensors")


def test_the_teacher_cache_is_keyed_and_never_trusts_a_bad_file(tmp_path: Path, teacher: Path) -> None:
    key = CacheKey("ab" * 32, "real:" + DegradationConfig().digest(), 0, 4, 32, 4, "cd" * 32)
    variants = [replace(key, teacher_sha256="ef" * 32), replace(key, degradation="bicubic"), replace(key, seed=1),
                replace(key, batch_size=8), replace(key, patch_size=64), replace(key, data="00" * 32)]
    assert len({key.digest(), *(v.digest() for v in variants)}) == 7
    model = tiny_model(seed=5)
    cache = TeacherCache(tmp_path / "c", key)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    made = Teacher(model, 4, cache)(lr, first=6)
    assert torch.equal(made, (made * 255).round() / 255)  # 8-bit levels, computed or read
    (path,) = cache.folder.glob("*.npy")
    assert path.name == "000000000006+2.npy" and not list(cache.folder.glob("*.tmp"))
    assert torch.equal(Teacher(model, 4, cache)(lr, first=6), made) and cache.hits == 1
    path.write_bytes(path.read_bytes()[:100])  # truncated: recomputed and rewritten, not trusted
    assert torch.equal(Teacher(model, 4, cache)(lr, first=6), made) and cache.misses == 2
    assert np.load(path).shape == (2, 3, 32, 32)


def test_targets_mix_the_teacher_with_the_sharpened_hr() -> None:
    hr = torch.zeros(1, 3, 32, 128)
    hr[..., 96:] = 0.6  # a vertical edge
    hr[..., :16] = 0.01 * torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(0))  # faint texture
    sharp = unsharp_mask(hr)
    # The edge gains contrast (the dark side cannot go below 0); the faint texture far from it, under the 10-level
    # threshold, is left exactly as it was.
    assert sharp[..., 90:96].max() == 0 and sharp[..., 96].min() > 0.65 and sharp.max() <= 1
    assert torch.equal(sharp[..., :16], hr[..., :16])
    model = tiny_model(seed=5)
    lr = torch.rand(1, 3, 8, 32, generator=torch.Generator().manual_seed(1))
    taught = Teacher(model, 4)(lr, first=0)
    mixed = make_target(lr, hr, sharpen=True, teacher=Teacher(model, 4), weight=0.25, first=0)
    assert torch.allclose(mixed, 0.25 * taught + 0.75 * sharp)
    assert torch.equal(make_target(lr, hr, sharpen=False, teacher=None, weight=1.0, first=0), hr)


def test_gan_stage_with_the_unet_discriminator(tmp_path: Path, images: Path) -> None:
    build_trainer(_config(images, iters=2, save_every=2), tmp_path / "psnr", CPU).run()
    init = str(tmp_path / "psnr" / "model_2.safetensors")
    with pytest.raises(ValueError, match="vgg discriminator needs a patch size that is a multiple of 32"):
        _config(images, stage="gan", iters=3, init=init, patch_size=24)
    gan = _real(images, None, stage="gan", iters=3, init=init, patch_size=24, discriminator="unet",
                sharpen_gt=True, perceptual_weights="random", perceptual_layer="conv1_2", disc_features=8,
                save_every=3, log_every=1)
    trainer = build_trainer(gan, tmp_path / "gan", CPU)
    d = trainer.discriminator
    assert isinstance(d, UNetDiscriminator)
    assert d(torch.rand(2, 3, 24, 24)).shape == (2, 1, 24, 24)  # a score per pixel
    assert any("parametrizations.weight.original" in k for k in d.state_dict())  # spectral normalisation
    start = {k: v.clone() for k, v in d.state_dict().items()}
    assert trainer.run()
    log = [json.loads(line) for line in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "l1", "perceptual", "gan", "d_loss", "d_real", "d_fake"} <= set(log[-1])
    assert all(np.isfinite(v) for e in log for v in e.values())
    assert any(not torch.equal(v, start[k]) for k, v in d.state_dict().items() if k.endswith("original"))


def test_the_teacher_must_fit_the_run_and_stay_the_same(tmp_path: Path, images: Path, teacher: Path) -> None:
    x2 = tiny_model(RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=2))
    save_safetensors(x2.state_dict(), x2.config, tmp_path / "x2.safetensors")
    with pytest.raises(TrainError, match="x2 model; the run trains x4"):
        build_trainer(_real(images, tmp_path / "x2.safetensors"), tmp_path / "r0", CPU)
    run = tmp_path / "r1"
    build_trainer(_real(images, teacher, iters=2, save_every=2), run, CPU).run()
    other = tiny_model(seed=6)
    save_safetensors(other.state_dict(), other.config, teacher)  # the file changes under the run
    from esrgan_cli.training.state import stored_config

    with pytest.raises(TrainError, match="not the file this run started with"):
        build_trainer(stored_config(run), run, CPU, resume=True)


def test_cli_checks_the_real_world_options(tmp_path: Path, images: Path, teacher: Path) -> None:
    common = ("train", "--stage", "psnr", "--data", images, *TINY_ARGS)
    settings = tmp_path / "settings.json"
    settings.write_text('{"second": {"jpeg_quality": [60, 101]}}')
    assert_one_line_error(esrgan(*common, "--out", tmp_path / "a", "--degradation-config", settings), 2,
                          "--degradation-config needs --degradation real")
    assert_one_line_error(esrgan(*common, "--out", tmp_path / "a", "--degradation", "real", "--degradation-config",
                                 settings), 2, "jpeg_quality must be integers in 1..100")
    settings.write_text('{"first": {"noise": [1, 2]}}')
    assert_one_line_error(esrgan(*common, "--out", tmp_path / "a", "--degradation", "real", "--degradation-config",
                                 settings), 2, "unknown degradation setting first.noise")
    assert_one_line_error(esrgan(*common, "--out", tmp_path / "a", "--teacher-weight", "0.5"), 2, "need a --teacher")
    assert_one_line_error(esrgan(*common, "--out", tmp_path / "a", "--teacher", teacher, "--sharpen-gt"), 2,
                          "--sharpen-gt")
    assert_error_after_setup(esrgan(*common, "--out", tmp_path / "a", "--teacher", tmp_path / "none.safetensors"),
                             1, "none.safetensors")
    assert not (tmp_path / "a").exists()


def test_ctrl_c_then_resume_matches_a_straight_distilled_real_world_run(tmp_path: Path, images: Path,
                                                                       teacher: Path) -> None:
    """The issue's tiny `--degradation real --teacher` CLI run: Ctrl-C saves the state, and the resumed run (which
    reads the targets the cut run cached) ends with the straight run's weights, bit for bit."""
    args = ("train", "--stage", "psnr", "--data", images, "--iters", "50", "--save-every", "50", "--seed", "1",
            "--degradation", "real", "--teacher", teacher, *TINY_ARGS)
    assert esrgan(*args, "--out", tmp_path / "straight", timeout=WAIT_S).returncode == 0
    run, cache = tmp_path / "cut", tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "esrgan_cli", *map(str, args), "--out", str(run), "--log-every",
                             "1", "--teacher-cache", str(cache)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    log = run / "log.jsonl"
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 10, proc, "10 logged iterations")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun with --resume" in err
    stopped = torch.load(run / "state.pt", weights_only=True)["iteration"]
    assert 10 <= stopped < 50
    # A changed teacher weight is refused; the cache folder may move (it holds what would be computed again).
    assert_one_line_error(esrgan("train", "--stage", "psnr", "--out", run, "--resume", "--teacher-weight", "0.5"), 2,
                          "--teacher-weight 0.5 differs")
    r = esrgan("train", "--stage", "psnr", "--out", run, "--resume", "--log-every", "10", timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    assert _same(tmp_path / "straight" / "model_50.safetensors", run / "model_50.safetensors")
    (folder,) = cache.iterdir()
    assert len(list(folder.glob("*.npy"))) == 50


GAN_KW: dict[str, object] = dict(stage="gan", perceptual_weights="random", perceptual_layer="conv1_2",
                                 perceptual_loss="distance", gan_weight=0.0, pixel_weight=1.0, perceptual_weight=0.1)


@pytest.mark.parametrize("stage_kw", [{}, GAN_KW], ids=["psnr", "perceptual-stage"])
def test_the_levels_term_teaches_flat_black_and_white_to_stay_put(tmp_path: Path, images: Path,
                                                                  stage_kw: dict[str, object]) -> None:
    """A run with --levels-weight ends with flat black and white far nearer their level than the same run without,
    in either stage."""
    from esrgan_cli.model.levels import measure_levels
    from esrgan_cli.model.weights import load_weights
    from esrgan_cli.training._losses import flat_patches, levels_error

    flats = flat_patches(7, torch.zeros(2, 3, 8, 8))
    assert flats.shape == (3, 3, 8, 8) and flats[0].max() == 0 and flats[1].min() == 1
    assert torch.equal(flat_patches(7, torch.zeros(1, 3, 8, 8)), flat_patches(7, torch.zeros(1, 3, 8, 8)))
    assert float(levels_error(flats, flats)) == 0.0
    lifted = tiny_model(RRDBConfig(num_feat=8, num_block=1, num_grow=4))
    with torch.no_grad():
        lifted.conv_last.bias.add_(0.08)
    start = tmp_path / "lifted.safetensors"
    save_safetensors(lifted.state_dict(), lifted.config, start)
    errors = {}
    for weight in (0.0, 5.0):
        run = tmp_path / f"w{weight}"
        config = _real(images, None, iters=30, lr=2e-3, init=str(start), save_every=30, levels_weight=weight,
                       **stage_kw)
        assert build_trainer(config, run, CPU).run()
        errors[weight] = measure_levels(load_weights(run / "model_30.safetensors")).worst()
    print(f"\nworst level error after 30 iterations: without {errors[0.0]:.4f}, with the term {errors[5.0]:.4f}")
    assert errors[5.0] < 0.5 * errors[0.0]
    with pytest.raises(ValueError, match="levels weight must be at least 0"):
        _real(images, None, init=str(start), levels_weight=-1.0)
