"""`esrgan eval --degradation real`: a reproducible real-world LR set made from an HR folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_cli import assert_one_line_error, esrgan

from esrgan_cli.eval.realworld import image_number, real_degradation
from esrgan_cli.eval.score import EvalPair, load_pair
from esrgan_cli.image.resize import imresize

from conftest import random_image


def hr_folder(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(n):
        smooth = imresize((random_image(16, 20, seed=i) * 255).astype(np.uint8), 4)  # photo-like: smooth
        Image.fromarray(smooth).save(folder / f"img{i}.png")
    return folder


def test_each_image_gets_its_own_reproducible_damage(tmp_path: Path) -> None:
    folder = hr_folder(tmp_path, 2)
    pairs = [EvalPair(p.stem, p, None) for p in sorted(folder.iterdir())]
    first = [load_pair(p, 4, real_degradation(seed=1))[1] for p in pairs]
    again = [load_pair(p, 4, real_degradation(seed=1))[1] for p in pairs]
    other_seed = [load_pair(p, 4, real_degradation(seed=2))[1] for p in pairs]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other_seed, strict=True))
    assert first[0].shape == (16, 20, 3) and first[0].dtype == np.uint8
    # The damage is more than bicubic's: blur, noise and JPEG take the LR away from a clean downscale.
    hr = load_pair(pairs[0], 4)[0]
    clean = imresize(hr, 0.25).astype(np.float32)
    assert float(np.abs(first[0].astype(np.float32) - clean).mean()) > 1.0
    assert image_number("img0") == image_number("img0") != image_number("img1")


def test_eval_real_is_reproducible_and_saves_the_lr_set(tmp_path: Path) -> None:
    folder = hr_folder(tmp_path)
    args = ("eval", "bicubic", "--hr", folder, "--degradation", "real", "--seed", "5", "--json",
            "--perceptual-weights", "none")
    one = esrgan(*args, "--save-lr", tmp_path / "lr")
    two = esrgan(*args)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["images"] == b["images"] and a["degradation"].startswith("real (seed 5")
    saved = sorted(p.name for p in (tmp_path / "lr").iterdir())
    assert saved == ["img0.png", "img1.png", "img2.png"]
    # The saved set, read back with --lr, scores the same.
    three = esrgan("eval", "bicubic", "--hr", folder, "--lr", tmp_path / "lr", "--json", "--perceptual-weights", "none")
    assert three.returncode == 0, three.stderr
    assert json.loads(three.stdout)["images"] == a["images"]


def test_eval_real_with_settings_and_mistakes(tmp_path: Path) -> None:
    folder = hr_folder(tmp_path, 1)
    milder = tmp_path / "milder.json"
    milder.write_text(json.dumps({"final_sinc_prob": 0.0, "second": {"jpeg_quality": [90, 95]}}))
    base = ("eval", "bicubic", "--hr", folder, "--json", "--perceptual-weights", "none")
    default = esrgan(*base, "--degradation", "real")
    changed = esrgan(*base, "--degradation", "real", "--degradation-config", milder)
    assert default.returncode == 0 and changed.returncode == 0, default.stderr + changed.stderr
    assert json.loads(default.stdout)["degradation"] != json.loads(changed.stdout)["degradation"]
    assert_one_line_error(esrgan(*base, "--degradation-config", milder), 2, "needs --degradation real")
    assert_one_line_error(esrgan(*base, "--degradation", "real", "--lr", folder), 2, "with --lr they are read")
