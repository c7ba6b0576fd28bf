"""MATLAB-style resizing, literature PSNR/SSIM, and `esrgan eval` (with its perceptual distance)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_cli import assert_one_line_error, esrgan

from esrgan_cli.errors import EsrganError, EvalDataError
from esrgan_cli.eval._metrics import psnr, psnr_y, ssim, y_channel
from esrgan_cli.eval.distance import load_distance
from esrgan_cli.eval.score import Degradation, load_pair, pair_images, score_pairs
from esrgan_cli.image.resize import imresize, modcrop, resize_matrix
from esrgan_cli.model.vgg import PerceptualConfig, VGGFeatures

from conftest import random_image


def test_resize_rows_are_normalised_and_linear_ramps_are_kept() -> None:
    for n_in, n_out in ((8, 4), (8, 2), (4, 16), (37, 9)):
        m = resize_matrix(n_in, n_out, n_out / n_in)
        assert np.allclose(m.sum(axis=1), 1.0)
    # A symmetric normalised kernel keeps a linear ramp linear away from the mirrored borders:
    # output x (1-based) samples the input at u = x/s + (1 - 1/s)/2, i.e. 0-based position 2x - 1.5 for s = 1/2.
    ramp = np.arange(16, dtype=np.float64)[None, :]
    half = imresize(ramp, 0.5)[0]
    assert np.allclose(half[2:-2], 2 * np.arange(1, 9)[2:-2] - 1.5)
    assert half.shape == (8,)


def test_upscaling_by_two_matches_matlab() -> None:
    # MATLAB: imresize([1 2 3 4], 2) = 0.9063 1.1797 1.7266 2.2500 2.7500 3.2734 3.8203 4.0938
    out = imresize(np.array([[1.0, 2.0, 3.0, 4.0]]), size=(1, 8))[0]
    assert np.allclose(out, [0.90625, 1.1796875, 1.7265625, 2.25, 2.75, 3.2734375, 3.8203125, 4.09375])


def test_downscaling_reproduces_the_benchmark_lr_files(shared: Path) -> None:
    """Set5/Set14 `LR_bicubic/X4` were made by MATLAB from the HR files: ours must give the same 8-bit images."""
    total = exact = 0
    worst = 0
    for name in ("Set5", "Set14"):
        root = shared / "testsets" / name
        for hr_path in sorted((root / "HR").glob("*.png")):
            hr = np.asarray(Image.open(hr_path).convert("RGB"))
            lr = np.asarray(Image.open(root / "LR_bicubic" / "X4" / f"{hr_path.stem}x4.png").convert("RGB"))
            ours = imresize(modcrop(hr, 4), 1 / 4)
            assert ours.dtype == np.uint8 and ours.shape == lr.shape
            diff = np.abs(ours.astype(int) - lr)
            total, exact, worst = total + diff.size, exact + int((diff == 0).sum()), max(worst, int(diff.max()))
    print(f"\nLR files reproduced: {exact / total:.4%} of values exact, worst difference {worst}")
    assert exact / total > 0.999 and worst <= 1


def test_metrics_follow_the_literature_conventions() -> None:
    white, black = np.full((2, 2, 3), 255.0), np.zeros((2, 2, 3))
    assert np.allclose(y_channel(white), 235.0) and np.allclose(y_channel(black), 16.0)
    hr = (random_image(40, 40) * 255).round()
    assert psnr_y(hr, hr, 4) == math.inf
    # A uniform offset of one 8-bit level on every channel moves Y by 219/255 of a level.
    shifted = psnr_y(hr + 1, hr, 4)
    assert shifted == pytest.approx(20 * math.log10(255 / (219 / 255)), abs=1e-6)
    assert psnr(hr, hr + 2) == pytest.approx(20 * math.log10(255 / 2))
    y = y_channel(hr)
    assert ssim(y, y) == pytest.approx(1.0)
    noisy = y + np.random.default_rng(0).normal(0, 10, y.shape)
    assert 0 < ssim(noisy, y) < ssim(y + np.random.default_rng(0).normal(0, 2, y.shape), y) < 1


def test_pairing_by_name_with_or_without_the_scale_suffix(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 32)).save(tmp_path / "hr" / f"{name}.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "lr" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "lr" / "bx4.png")
    pairs = pair_images(tmp_path / "hr", tmp_path / "lr", 4)
    assert [(p.name, p.lr.name if p.lr else None) for p in pairs] == [("a", "a.png"), ("b", "bx4.png")]
    (tmp_path / "lr" / "bx4.png").unlink()
    with pytest.raises(EvalDataError, match="no LR image named b"):
        pair_images(tmp_path / "hr", tmp_path / "lr", 4)


@pytest.mark.parametrize("with_lr", [True, False])
def test_eval_of_bicubic_on_set5_gives_the_literature_value(shared: Path, with_lr: bool) -> None:
    root = shared / "testsets" / "Set5"
    args = ["eval", "bicubic", "--hr", str(root / "HR"), "--json"]
    if with_lr:
        args += ["--lr", str(root / "LR_bicubic" / "X4")]
    r = esrgan(*args)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    print(f"\nbicubic Set5 ({'LR files' if with_lr else 'LR made by esrgan'}): {data['mean']['psnr']:.3f} dB, "
          f"SSIM {data['mean']['ssim']:.4f} (literature 28.42)")
    assert len(data["images"]) == 5
    assert data["mean"]["psnr"] == pytest.approx(28.42, abs=0.1)
    assert data["mean"]["psnr"] == pytest.approx(data["mean"]["psnr_bicubic"])


def test_eval_of_a_model_reports_each_image_beside_bicubic(tmp_path: Path, tiny_weights: Path) -> None:
    (tmp_path / "hr").mkdir()
    for i in range(2):
        Image.fromarray((random_image(50, 46, seed=i) * 255).round().astype(np.uint8)).save(
            tmp_path / "hr" / f"img{i}.png")
    r = esrgan("eval", str(tiny_weights), "--hr", str(tmp_path / "hr"), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [x["name"] for x in data["images"]] == ["img0", "img1"]
    bic = esrgan("eval", "bicubic", "--hr", str(tmp_path / "hr"), "--json")
    assert [x["psnr"] for x in json.loads(bic.stdout)["images"]] == [x["psnr_bicubic"] for x in data["images"]]
    # A random tiny network is far from the HR images; bicubic is not.
    assert all(x["psnr"] < x["psnr_bicubic"] for x in data["images"])
    table = esrgan("eval", str(tiny_weights), "--hr", str(tmp_path / "hr"))
    assert table.returncode == 0 and "mean" in table.stdout


def test_eval_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    assert_one_line_error(esrgan("eval", "bicubic", "--hr", str(tmp_path / "hr")), 1, "no images found")
    Image.new("RGB", (32, 32)).save(tmp_path / "hr" / "a.png")
    (tmp_path / "lr").mkdir()
    Image.new("RGB", (9, 8)).save(tmp_path / "lr" / "a.png")
    assert_one_line_error(esrgan("eval", "bicubic", "--hr", str(tmp_path / "hr"), "--lr", str(tmp_path / "lr")),
                          1, "is not 1/4 of")


def test_lr_images_come_from_the_degradation_given(tmp_path: Path) -> None:
    """The LR maker is a strategy: eval scores whatever LR images it makes, and refuses ones of the wrong size."""
    (tmp_path / "hr").mkdir()
    hr = (random_image(40, 48, seed=3) * 255).round().astype(np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr" / "pic.png")
    seen: list[tuple[str, int, tuple[int, ...]]] = []

    def every_fourth(image: np.ndarray, scale: int, name: str) -> np.ndarray:
        seen.append((name, scale, image.shape))
        return np.ascontiguousarray(image[::scale, ::scale])

    pairs = pair_images(tmp_path / "hr", None, 4)
    given: list[np.ndarray] = []

    def nearest(lr: np.ndarray) -> np.ndarray:
        given.append(lr)
        return lr.repeat(4, axis=0).repeat(4, axis=1)

    [score] = score_pairs(pairs, nearest, 4, Degradation("nearest", every_fourth))
    assert seen == [("pic", 4, (40, 48, 3))]
    assert np.array_equal(given[0], hr[::4, ::4])
    assert score.perceptual is None and score.perceptual_bicubic is None
    assert load_pair(pairs[0], 4)[1].shape == (10, 12, 3)  # the default: bicubic
    wrong = Degradation("wrong", lambda image, scale, name: image[::2, ::2])
    with pytest.raises(EsrganError, match="the wrong degradation gave"):
        list(score_pairs(pairs, nearest, 4, wrong))


def test_eval_reports_the_perceptual_distance_beside_psnr(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vgg = VGGFeatures(PerceptualConfig("conv3_4"))
    vgg_path = tmp_path / "vgg.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.state_dict().items()}, str(vgg_path))
    (tmp_path / "hr").mkdir()
    for i in range(2):
        Image.fromarray((random_image(44, 52, seed=i) * 255).round().astype(np.uint8)).save(
            tmp_path / "hr" / f"img{i}.png")
    r = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights", vgg_path, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["perceptual_distance"] == {"weights": str(vgg_path), "input": "imagenet-rgb",
                                           "layers": ["relu1_2", "relu2_2", "relu3_4"]}
    assert data["degradation"] == "bicubic"
    # Bicubic against itself; each figure is the distance of the 4-pixel-cropped images, computed here directly.
    distance = load_distance(vgg_path)
    for i, image in enumerate(data["images"]):
        hr = modcrop(np.asarray(Image.open(tmp_path / "hr" / f"img{i}.png")), 4)
        sr = imresize(imresize(hr, 1 / 4), size=hr.shape[:2])
        assert image["perceptual"] == image["perceptual_bicubic"] > 0
        assert image["perceptual"] == pytest.approx(distance(sr[4:-4, 4:-4], hr[4:-4, 4:-4]), rel=1e-6)
    assert data["mean"]["perceptual"] == pytest.approx(np.mean([x["perceptual"] for x in data["images"]]))
    table = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights", vgg_path)
    assert table.returncode == 0, table.stderr
    assert "percept" in table.stdout.splitlines()[0] and "lower is better" in table.stdout


def test_eval_without_vgg_weights_skips_the_distance_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    Image.fromarray((random_image(32, 32) * 255).round().astype(np.uint8)).save(tmp_path / "hr" / "a.png")
    empty_cache = {"HF_HOME": str(tmp_path / "hf"), "ESRGAN_CACHE": str(tmp_path / "cache")}
    r = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--json", env=empty_cache)
    assert r.returncode == 0, r.stderr
    assert "note: no perceptual distance" in r.stderr and "--perceptual-weights" in r.stderr
    data = json.loads(r.stdout)
    assert data["perceptual_distance"] is None and data["images"][0]["perceptual"] is None
    assert data["mean"]["perceptual"] is None
    # Asked for the Hub copy with no network: the same note, and the scores still come.
    hub = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights", "hub", env=empty_cache)
    assert hub.returncode == 0 and "note: no perceptual distance" in hub.stderr, hub.stderr
    assert "percept" not in hub.stdout and "mean" in hub.stdout
    quiet = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights", "none", env=empty_cache)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    # A file that is not there is a mistake, not a missing download.
    assert_one_line_error(esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights",
                                 tmp_path / "nope.safetensors"), 1, "no such VGG19 weights file")
