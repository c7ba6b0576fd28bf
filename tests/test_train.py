"""The trainer: data stream, schedule, both stages, exact resume, CLI behaviour, and DDP with gloo."""

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
from PIL import Image
from safetensors.torch import load_file
from test_cli import assert_one_line_error, esrgan
from torch.utils.data import DataLoader

from esrgan_cli.cli import train as cli_train
from esrgan_cli.errors import TrainError
from esrgan_cli.eval.distance import unit_distance
from esrgan_cli.eval.score import mean_scores, pair_images, score_pairs, with_upscaler
from esrgan_cli.image.resize import imresize
from esrgan_cli.model.arch import INIT_SCHEMES, RRDBConfig
from esrgan_cli.model.vgg import LAYERS, VGGLayer
from esrgan_cli.model.weights import LoadedWeights, load_weights
from esrgan_cli.training._data import ImageSet, IterationSampler, PatchPairs, augment
from esrgan_cli.training.build import build_trainer
from esrgan_cli.training.config import PerceptualInput, PerceptualLoss, Precision, Stage, TrainConfig, WeightInit
from esrgan_cli.training.state import read_state
from esrgan_cli.upscale.device import Placement
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import ROOT, WAIT_S, default_sigint, random_image, wait_until

TINY = RRDBConfig(num_feat=8, num_block=1, num_grow=4)
TINY_ARGS = ("--blocks", "1", "--features", "8", "--growth", "4", "--patch-size", "32", "--batch-size", "4")


def _write_images(folder: Path, n: int, size: tuple[int, int] = (56, 48), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (random_image(size[1], size[0], seed=seed + i) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return _write_images(tmp_path / "data", 6)


def assert_error_after_setup(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """A failure met while a run sets up: the lines naming the setup steps begun (each ending in "…"), then one
    error line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("esrgan: error: "), proc.stderr
    assert all(line.startswith("esrgan: ") and line.endswith("…") for line in lines[:-1]), proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], proc.stderr


def _config(data: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(stage="psnr", data=str(data), iters=20, model=TINY, batch_size=4, patch_size=32,
                                   lr=1e-3, val_every=10, save_every=10, log_every=5, seed=3)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same(a: Path, b: Path) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# -- data -------------------------------------------------------------------------------------------------


def test_unusable_images_are_skipped_and_named(tmp_path: Path) -> None:
    folder = _write_images(tmp_path / "d", 2)
    Image.new("RGB", (20, 20)).save(folder / "small.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    images = ImageSet(folder, 32)
    assert len(images) == 2
    reasons = {s.path.name: s.reason for s in images.skipped}
    assert set(reasons) == {"small.png", "broken.png"}
    assert "smaller than the 32-pixel patch" in reasons["small.png"]


def test_lr_patches_are_crops_of_the_whole_image_downscaled(images: Path) -> None:
    """The margin makes each LR patch equal the same crop of the whole LR image, at image borders too."""
    image_set = ImageSet(images, 32)
    pairs = PatchPairs(image_set, 32, 4, seed=1)
    wholes = [(image_set[i][:48, :56], imresize(image_set[i][:48, :56], 1 / 4)) for i in range(len(image_set))]
    checked = 0
    for k in range(12):
        lr, hr = pairs[k]
        hr8 = (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        lr8 = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        matches = [
            (augment(whole[y : y + 32, x : x + 32], code), augment(small[y // 4 : y // 4 + 8, x // 4 : x // 4 + 8],
                                                                       code))
            for whole, small in wholes for code in range(8)
            for y in range(0, 48 - 32 + 1, 4) for x in range(0, 56 - 32 + 1, 4)
        ]
        found = [want for crop, want in matches if np.array_equal(crop, hr8)]
        assert found, f"sample {k} is not a crop of any training image on the 4-pixel grid"
        # The region is resized alone, so the uint8 rounding after the first pass may differ by one level.
        assert np.abs(found[0].astype(int) - lr8).max() <= 1
        checked += 1
    assert checked == 12


def test_the_sample_stream_does_not_depend_on_workers(images: Path) -> None:
    pairs = PatchPairs(ImageSet(images, 32), 32, 4, seed=5)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(pairs, batch_sampler=IterationSampler(3, 7, 4), num_workers=workers)
        return [hr for _, hr in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 4 and all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    # Two ranks split each global batch between them.
    halves = [list(IterationSampler(3, 4, 4, rank, 2))[0] for rank in (0, 1)]
    assert halves[0] + halves[1] == list(IterationSampler(3, 4, 4))[0]


def test_schedule_is_the_papers_shape_scaled_to_the_run() -> None:
    c = _config(Path("."), iters=1000)
    assert c.milestones == (200, 400, 600, 800)
    # A linear warm-up over the first tenth (PSNR stage only), then the paper's halvings.
    assert c.warmup == 100
    assert [c.lr_at(i) for i in (0, 49, 99, 199, 200, 999)] == [1e-5, 5e-4, 1e-3, 1e-3, 5e-4, 1e-3 / 16]
    assert TrainConfig(stage="psnr", data=".", iters=1_000_000).warmup == 1000
    assert TrainConfig(stage="psnr", data=".", iters=1000, warmup=0, lr=1e-3).lr_at(0) == 1e-3
    g = TrainConfig(stage="gan", data=".", iters=400_000, init="x.safetensors")
    assert g.milestones == (50_000, 100_000, 200_000, 300_000) and g.lr == 1e-4 and g.warmup == 0
    assert TrainConfig.from_json(c.to_json()) == c


# -- the trainer ------------------------------------------------------------------------------------------


def test_psnr_stage_learns_and_writes_its_files(tmp_path: Path, images: Path) -> None:
    val = _write_images(tmp_path / "val", 2, size=(48, 40), seed=50)
    run = tmp_path / "run"
    reports = []
    # From the paper's random start, so the loss has far to fall (the interpolating start begins near the floor
    # these random images allow; the BSD200 test below covers it).
    config = replace(_config(images, iters=60, lr=2e-3, val=str(val), val_every=30, save_every=30), weight_init="paper")
    trainer = build_trainer(config, run, torch.device("cpu"), report=reports.append)
    start = LoadedWeights(trainer.ema.state_dict(), config.model, {}, Path("<start>"), torch.float32)
    upscale = with_upscaler(Upscaler(start, Placement(torch.device("cpu"), torch.float32, "")))
    untrained = mean_scores(list(score_pairs(pair_images(val, None, 4), upscale, 4))).psnr
    assert trainer.run()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    vals = [e for e in log if "val_psnr" in e]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3])
    # Far above the random start. (Not "rising from 30 to 60": this tiny net, trained on 8-pixel LR patches that
    # are all zero-padded border, is judged on whole images with reflected edges, and wanders by tenths of a dB.)
    assert [v["iter"] for v in vals] == [30, 60] and min(v["val_psnr"] for v in vals) > untrained + 3
    assert {"iter", "loss", "l1", "lr"} <= set(log[0])
    meta_path = run / "model_60.safetensors"
    from safetensors import safe_open

    with safe_open(str(meta_path), framework="pt") as f:
        meta = f.metadata()
    assert meta["esrgan.stage"] == "psnr" and meta["esrgan.iteration"] == "60"
    assert float(meta["esrgan.val_psnr"]) == pytest.approx(vals[1]["val_psnr"], abs=1e-3)
    assert {r.kind for r in reports} >= {"step", "val", "save"}


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path: Path, images: Path) -> None:
    config = _config(images, iters=20, save_every=20)
    straight = build_trainer(config, tmp_path / "a", torch.device("cpu"))
    straight.run()
    first = build_trainer(config, tmp_path / "b", torch.device("cpu"))
    assert first.run(should_stop=lambda: first.iteration >= 9) is False
    assert first.iteration == 9
    second = build_trainer(config, tmp_path / "b", torch.device("cpu"), resume=True)
    assert second.iteration == 9
    assert second.run()
    assert _same(tmp_path / "a" / "model_20.safetensors", tmp_path / "b" / "model_20.safetensors")
    state_a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert all(torch.equal(state_a["generator"][k], state_b["generator"][k]) for k in state_a["generator"])
    # Log lines are means over --log-every iterations: only the window cut by the stop (5..10) may differ.
    log_a, log_b = ([json.loads(x) for x in (tmp_path / run / "log.jsonl").read_text().splitlines()]
                    for run in ("a", "b"))
    assert [e for e in log_a if e["iter"] != 10] == [e for e in log_b if e["iter"] != 10]


def test_gan_stage_from_a_psnr_model(tmp_path: Path, images: Path) -> None:
    build_trainer(_config(images, iters=4, save_every=4), tmp_path / "psnr", torch.device("cpu")).run()
    init = tmp_path / "psnr" / "model_4.safetensors"
    reports = []
    gan = _config(images, stage="gan", iters=6, lr=0.0, init=str(init), perceptual_weights="random",
                  perceptual_layer="conv2_2", save_every=3, log_every=3)
    trainer = build_trainer(gan, tmp_path / "gan", torch.device("cpu"), report=reports.append)
    start = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    assert trainer.run()
    assert any(r.kind == "warn" and "RANDOM VGG19" in r.message for r in reports)
    log = [json.loads(line) for line in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "l1", "perceptual", "gan", "d_loss", "d_real", "d_fake"} <= set(log[-1])
    assert all(np.isfinite(v) for e in log for v in e.values())
    assert gan.lr == 1e-4 and log[0]["lr"] == gan.lr_at(2)
    moved = [k for k, v in trainer.discriminator.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.endswith("weight") for k in moved)
    assert not _same(init, tmp_path / "gan" / "model_6.safetensors")


def test_a_perceptual_stage_without_a_discriminator_learns_and_resumes_bit_for_bit(tmp_path: Path,
                                                                                    images: Path) -> None:
    """--gan-weight 0 --perceptual-loss distance: no discriminator is built or saved, the distance to the target
    falls, and an interrupted run resumes to the very same weights."""
    build_trainer(_config(images, iters=4, save_every=4), tmp_path / "psnr", torch.device("cpu")).run()
    per = _config(images, stage="gan", iters=30, lr=2e-3, init=str(tmp_path / "psnr" / "model_4.safetensors"),
                  perceptual_weights="random", perceptual_layer="conv2_2", perceptual_loss="distance",
                  gan_weight=0.0, pixel_weight=0.0, save_every=30, log_every=10)
    straight = build_trainer(per, tmp_path / "a", torch.device("cpu"))
    assert straight.discriminator is None and straight.gan is not None and straight.gan.distance is not None
    # The step's perceptual term is the distance itself, of the model's output on the batch from the HR patches.
    probe = build_trainer(per, tmp_path / "probe", torch.device("cpu"))
    assert probe.gan is not None and probe.gan.distance is not None
    lr_img, hr_img = next(probe._loader())
    with torch.no_grad():
        expected = unit_distance(probe.gan.distance(probe.generator(lr_img)), probe.gan.distance(hr_img))
    assert float(probe.step(lr_img, hr_img)["perceptual"]) == pytest.approx(float(expected), rel=1e-5)
    assert straight.run()
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert set(log[-1]) == {"iter", "loss", "l1", "perceptual", "lr"}
    assert log[-1]["perceptual"] < 0.9 * log[0]["perceptual"]
    assert "discriminator" not in torch.load(tmp_path / "a" / "state.pt", weights_only=True)

    # No discriminator, so no patch-size multiple of its own (the VGG discriminator's is 32).
    assert _config(images, stage="gan", init="m.safetensors", gan_weight=0.0, patch_size=36).patch_size == 36
    with pytest.raises(ValueError, match="multiple of 32"):
        _config(images, stage="gan", init="m.safetensors", patch_size=36)

    first = build_trainer(per, tmp_path / "b", torch.device("cpu"))
    assert first.run(should_stop=lambda: first.iteration >= 13) is False
    second = build_trainer(per, tmp_path / "b", torch.device("cpu"), resume=True)
    assert second.iteration == 13 and second.run()
    assert _same(tmp_path / "a" / "model_30.safetensors", tmp_path / "b" / "model_30.safetensors")


def test_a_psnr_stage_can_fine_tune_a_model_given_with_init(tmp_path: Path, images: Path) -> None:
    build_trainer(_config(images, iters=4, save_every=4), tmp_path / "first", torch.device("cpu")).run()
    init = tmp_path / "first" / "model_4.safetensors"
    fresh = build_trainer(_config(images), tmp_path / "fresh", torch.device("cpu"))
    tuned = build_trainer(_config(images, init=str(init)), tmp_path / "tuned", torch.device("cpu"))
    start = _tensors(init)
    assert all(torch.equal(v.float(), start[k].float()) for k, v in tuned.generator.state_dict().items())
    assert not all(torch.equal(v, tuned.generator.state_dict()[k]) for k, v in fresh.generator.state_dict().items())


def test_relativistic_losses_send_gradients_where_they_belong(tmp_path: Path, images: Path) -> None:
    """G's step must leave D's weights alone; D's step must not reach G (the fake is detached)."""
    build_trainer(_config(images, iters=2, save_every=2), tmp_path / "psnr", torch.device("cpu")).run()
    gan = _config(images, stage="gan", iters=1, init=str(tmp_path / "psnr" / "model_2.safetensors"),
                  perceptual_weights="random", perceptual_layer="conv1_2")
    trainer = build_trainer(gan, tmp_path / "gan", torch.device("cpu"))
    lr_img, hr_img = next(trainer._loader())
    seen: dict[str, list[bool]] = {"g_during_d": [], "d_during_g": []}
    original = trainer._update

    def spy(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        original(opt, loss)
        if opt is trainer.g_opt:
            seen["d_during_g"] = [p.grad is not None for p in trainer.discriminator.parameters()]
            trainer.g_opt.zero_grad(set_to_none=True)
        else:
            seen["g_during_d"] = [p.grad is not None for p in trainer.generator.parameters()]

    trainer._update = spy  # type: ignore[method-assign]
    trainer.step(lr_img, hr_img)
    assert seen["d_during_g"] and not any(seen["d_during_g"])
    assert seen["g_during_d"] and not any(seen["g_during_d"])


def test_building_a_trainer_writes_nothing_and_steps_do_not_read_the_losses(tmp_path: Path, images: Path) -> None:
    run = tmp_path / "run"
    trainer = build_trainer(_config(images, iters=4, save_every=4), run, torch.device("cpu"))
    assert not run.exists()  # the run folder is the run's business, not the constructor's
    lr_img, hr_img = next(trainer._loader())
    terms = trainer.step(lr_img, hr_img)
    assert set(terms) == {"loss", "l1"}
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 and not t.requires_grad for t in terms.values())
    assert not run.exists()
    trainer = build_trainer(_config(images, iters=4, save_every=4), run, torch.device("cpu"))
    assert trainer.run()
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "log.jsonl", "model_4.safetensors", "state.pt"]


def test_a_non_finite_loss_stops_the_run_before_anything_is_saved(tmp_path: Path, images: Path) -> None:
    run = tmp_path / "run"
    trainer = build_trainer(_config(images, iters=20, log_every=5, save_every=3), run, torch.device("cpu"))
    step = trainer.step

    def poisoned(lr_img: torch.Tensor, hr_img: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = step(lr_img, hr_img)
        return {**terms, "l1": torch.tensor(float("nan"))} if trainer.iteration == 2 else terms

    trainer.step = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainError, match=r"not finite in iterations 1\.\.3 \(loss .*, l1 nan\)"):
        trainer.run()
    # Caught at the save of iteration 3, before the first log line (5): nothing of the spoilt run is kept.
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_the_resume_state_is_checked_when_read(tmp_path: Path, images: Path) -> None:
    run = tmp_path / "run"
    build_trainer(_config(images, iters=2, save_every=2), run, torch.device("cpu")).run()
    state = read_state(run / "state.pt")
    assert state["iteration"] == 2 and "discriminator" not in state
    del state["ema"]  # type: ignore[misc]
    torch.save(state, run / "state.pt")
    with pytest.raises(TrainError, match="missing ema"):
        read_state(run / "state.pt")


def test_the_command_lines_choices_are_the_configs_literal_types() -> None:
    assert cli_train.STAGE_CHOICES == get_args(Stage)
    assert cli_train.PRECISION_CHOICES == get_args(Precision)
    assert cli_train.WEIGHT_INIT_CHOICES == get_args(WeightInit) and set(get_args(WeightInit)) == set(INIT_SCHEMES)
    assert cli_train.PERCEPTUAL_INPUT_CHOICES == get_args(PerceptualInput)
    assert cli_train.PERCEPTUAL_LOSS_CHOICES == get_args(PerceptualLoss)
    assert cli_train.VGG_LAYER_CHOICES == get_args(VGGLayer) == tuple(LAYERS)
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        _config(Path("."), perceptual_layer="conv6_1")


# -- the command line -------------------------------------------------------------------------------------


def test_cli_train_then_upscale_with_the_checkpoint(tmp_path: Path, images: Path) -> None:
    run = tmp_path / "run"
    r = esrgan("train", "--stage", "psnr", "--data", images, "--out", run, "--iters", "6", "--save-every", "3",
               *TINY_ARGS, timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "log.jsonl", "model_3.safetensors",
                                                      "model_6.safetensors", "state.pt"]
    out = tmp_path / "up.png"
    r = esrgan("upscale", images / "img00.png", "-o", out, "--model", run / "model_6.safetensors")
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (56 * 4, 48 * 4)
    # Options that change what a run computes cannot change on resume; its length can.
    assert_one_line_error(esrgan("train", "--stage", "psnr", "--out", run, "--resume", "--lr", "0.5"), 2,
                          "--lr 0.5 differs")
    r = esrgan("train", "--stage", "psnr", "--out", run, "--resume", "--iters", "8", timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    assert (run / "model_8.safetensors").exists()
    assert_one_line_error(esrgan("train", "--stage", "psnr", "--data", images, "--out", run, *TINY_ARGS), 1,
                          "already holds a run")


def test_cli_train_errors_are_one_line(tmp_path: Path, images: Path) -> None:
    assert_one_line_error(esrgan("train", "--stage", "psnr", "--out", tmp_path / "none", "--resume"), 1,
                          "nothing to resume")
    assert_error_after_setup(esrgan("train", "--stage", "psnr", "--data", tmp_path / "missing", "--out",
                                    tmp_path / "r"), 1, "not a folder")
    assert_one_line_error(esrgan("train", "--stage", "gan", "--data", images, "--out", tmp_path / "g"), 2,
                          "--init")
    assert_one_line_error(esrgan("train", "--stage", "psnr", "--data", images, "--out", tmp_path / "p",
                                 "--patch-size", "30"), 2, "multiple of the scale")


def test_gan_stage_needs_real_vgg_weights_or_says_why(tmp_path: Path, images: Path, shared: Path) -> None:
    run = tmp_path / "psnr"
    assert esrgan("train", "--stage", "psnr", "--data", images, "--out", run, "--iters", "2", *TINY_ARGS,
                  timeout=WAIT_S).returncode == 0
    init = run / "model_2.safetensors"
    common = ("train", "--stage", "gan", "--data", images, "--init", init, "--iters", "2",
              "--patch-size", "32", "--batch-size", "4")
    # Offline, with nothing given: the Hub download fails and nothing random is used silently.
    r = esrgan(*common, "--out", tmp_path / "g1", env={"HF_HUB_OFFLINE": "1"})
    assert_error_after_setup(r, 1, "VGG19", "timm/vgg19.tv_in1k")
    # The partial Caffe-BGR file has conv1_1..conv3_4: conv5_4 is refused, conv3_4 trains.
    vgg = shared / "vgg" / "vgg19-imagenet-conv1_1-conv3_4.caffe-bgr.safetensors"
    assert_error_after_setup(esrgan(*common, "--out", tmp_path / "g2", "--perceptual-weights", vgg), 1,
                             "conv1_1..conv3_4 only")
    r = esrgan(*common, "--out", tmp_path / "g3", "--perceptual-weights", vgg, "--perceptual-layer", "conv3_4",
               timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g3" / "model_2.safetensors").exists()
    config = json.loads((tmp_path / "g3" / "config.json").read_text())
    assert config["model"]["num_block"] == 1  # the architecture came from --init


def test_ctrl_c_saves_the_state_and_resume_matches_a_straight_run(tmp_path: Path, images: Path) -> None:
    args = ("train", "--stage", "psnr", "--data", images, "--iters", "400", "--save-every", "400", "--seed", "1",
            *TINY_ARGS)
    assert esrgan(*args, "--out", tmp_path / "straight", timeout=WAIT_S).returncode == 0
    run = tmp_path / "cut"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "esrgan_cli", *map(str, args), "--out", str(run), "--log-every",
                             "1"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    log = run / "log.jsonl"
    # --log-every 1: a log line is written after every iteration, so 20 lines mean 20 iterations done.
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 20, proc, "20 logged iterations")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun with --resume" in err
    stopped = torch.load(run / "state.pt", weights_only=True)["iteration"]
    assert 20 <= stopped < 400
    r = esrgan("train", "--stage", "psnr", "--out", run, "--resume", "--log-every", "10", timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
    assert _same(tmp_path / "straight" / "model_400.safetensors", run / "model_400.safetensors")


def test_ddp_with_two_gloo_processes_follows_the_single_process_curve(tmp_path: Path, images: Path) -> None:
    """--batch-size is global: two processes of half a batch each compute the same steps as one process."""
    common = ["--stage", "psnr", "--data", str(images), "--iters", "30", "--log-every", "5", *TINY_ARGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "esrgan_cli", "train", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "esrgan_cli", "train", *common, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert two.returncode == 0, two.stderr[-3000:]

    def curve(run: str) -> list[float]:
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    a, b = curve("one"), curve("two")
    print(f"\n1 process:   {[round(x, 5) for x in a]}\n2 processes: {[round(x, 5) for x in b]}")
    assert len(a) == len(b) == 6
    assert np.allclose(a, b, rtol=1e-3)
    assert b[-1] < b[0]


def test_tiny_run_on_bsd200_crops_then_a_gan_stage(tmp_path: Path, shared: Path) -> None:
    """The issue's tiny CPU run: 2 blocks, 16 features, 64-pixel patches, a dozen BSD200 crops, 200 iterations."""
    sources = sorted((shared / "trainsets" / "BSD200").glob("*.png"))
    data, val = tmp_path / "crops", tmp_path / "val"
    data.mkdir()
    val.mkdir()
    for i, path in enumerate(sources[:12]):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        img.crop((w // 2 - 64, h // 2 - 64, w // 2 + 64, h // 2 + 64)).save(data / f"crop{i:02d}.png")
    for path in sources[12:16]:  # held out: whole images the run never trains on
        Image.open(path).convert("RGB").save(val / path.name)
    # The warm-up is given so that the 100-iteration first half has the same schedule as the straight run.
    recipe = ["--stage", "psnr", "--data", data, "--val", val, "--blocks", "2", "--features", "16", "--growth",
              "32", "--patch-size", "64", "--lr", "1e-3", "--milestones", "1000", "--warmup", "20",
              "--val-every", "100", "--save-every", "100"]
    run = tmp_path / "psnr"
    r = esrgan("train", *recipe, "--out", run, "--iters", "200", timeout=3 * WAIT_S)
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    vals = [e for e in log if "val_psnr" in e]
    print(f"\nloss {losses[0]:.4f} -> {losses[-1]:.4f}; validation PSNR "
          + ", ".join(f"{v['iter']}: {v['val_psnr']:.2f} dB" for v in vals)
          + f" (bicubic {vals[-1]['val_psnr_bicubic']:.2f} dB)")
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert vals[-1]["val_psnr"] > vals[0]["val_psnr"]
    assert vals[-1]["val_psnr"] > vals[-1]["val_psnr_bicubic"]
    halves = tmp_path / "halves"
    assert esrgan("train", *recipe, "--out", halves, "--iters", "100", timeout=3 * WAIT_S).returncode == 0
    r = esrgan("train", *recipe[:2], "--out", halves, "--iters", "200", "--resume", timeout=3 * WAIT_S)
    assert r.returncode == 0, r.stderr
    straight, resumed = (load_weights(d / "model_200.safetensors").state_dict for d in (run, halves))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    out = tmp_path / "up.png"
    assert esrgan("upscale", val / sources[12].name, "-o", out, "--model", run / "model_200.safetensors",
                  timeout=WAIT_S).returncode == 0
    vgg = shared / "vgg" / "vgg19-imagenet-conv1_1-conv3_4.caffe-bgr.safetensors"
    r = esrgan("train", "--stage", "gan", "--data", data, "--init", run / "model_200.safetensors", "--out",
               tmp_path / "gan", "--iters", "20", "--patch-size", "64", "--perceptual-weights", vgg,
               "--perceptual-layer", "conv3_4", timeout=3 * WAIT_S)
    assert r.returncode == 0, r.stderr
    gan_log = [json.loads(line) for line in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert gan_log[-1]["iter"] == 20 and all(np.isfinite(v) for e in gan_log for v in e.values())
    assert (tmp_path / "gan" / "model_20.safetensors").exists()
