"""esrgan blend, convert, info and models: the weights-level commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from test_cli import assert_one_line_error, esrgan

from esrgan_cli.image.decode import read_image
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.blend import parse_alphas
from esrgan_cli.model.weights import load_weights, save_safetensors, sha256_of
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import random_image, run_upscaler, tiny_model


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.pth"
    save_safetensors(a.state_dict(), a.config, pa)
    torch.save({"params_ema": b.state_dict()}, pb)  # a different format and wrapper on purpose
    return pa, pb


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_blend_is_the_weighted_sum_of_every_tensor(pair: tuple[Path, Path], alpha: float, tmp_path: Path) -> None:
    pa, pb = pair
    out = tmp_path / "out.safetensors"
    proc = esrgan("blend", pa, pb, "--alpha", str(alpha), "-o", out, "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    a, b, got = load_weights(pa).state_dict, load_weights(pb).state_dict, load_weights(out).state_dict
    assert set(got) == set(a)
    for key in a:
        expected = (1 - alpha) * a[key].double() + alpha * b[key].double()
        assert torch.allclose(got[key].double(), expected, rtol=0, atol=1e-7 * (1 + expected.abs().max())), key
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert float(meta["esrgan.blend.alpha"]) == alpha
    assert meta["esrgan.blend.a_sha256"] == sha256_of(pa) and meta["esrgan.blend.b_sha256"] == sha256_of(pb)
    assert json.loads(meta["esrgan.config"])["num_block"] == 1


def test_fp16_parents_give_an_fp16_blend_within_its_rounding(tmp_path: Path) -> None:
    paths = []
    for seed in (1, 2):
        m = tiny_model(seed=seed)
        paths.append(tmp_path / f"{seed}.safetensors")
        save_safetensors(m.state_dict(), m.config, paths[-1], dtype=torch.float16)
    out = tmp_path / "o.safetensors"
    assert esrgan("blend", *paths, "--alpha", "0.6", "-o", out).returncode == 0
    blended = load_weights(out)
    assert blended.source_dtype == torch.float16
    a, b = (load_weights(p).state_dict for p in paths)
    for key, value in blended.state_dict.items():
        expected = (0.4 * a[key].double() + 0.6 * b[key].double()).to(torch.float16)
        assert torch.equal(value.to(torch.float16), expected), key


def test_blend_range_writes_one_file_per_alpha_and_a_preview(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pa, pb = pair
    image = tmp_path / "p.png"
    Image.fromarray((random_image(12, 16) * 255).astype(np.uint8)).save(image)
    proc = esrgan("blend", pa, pb, "--alpha", "0:1:0.5", "-o", tmp_path / "s.safetensors", "--preview", image)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.glob("s_*"))
    assert names == ["s_alpha0.5.safetensors", "s_alpha0.safetensors", "s_alpha1.safetensors", "s_preview.png"]
    sheet = Image.open(tmp_path / "s_preview.png")
    assert sheet.width > 3 * 64 and sheet.height > 48


def test_blending_different_architectures_is_refused(tmp_path: Path) -> None:
    small, big = tiny_model(), tiny_model(RRDBConfig(num_feat=8, num_block=2, num_grow=4))
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_safetensors(small.state_dict(), small.config, pa)
    save_safetensors(big.state_dict(), big.config, pb)
    proc = esrgan("blend", pa, pb, "--alpha", "0.5", "-o", tmp_path / "out.safetensors")
    assert_one_line_error(proc, 1, "num_block is 1 in a.safetensors and 2 in b.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_blending_the_real_6_and_23_block_models_is_refused(shared: Path, tmp_path: Path) -> None:
    w = shared / "weights"
    proc = esrgan("blend", w / "realesrgan-x4plus-anime-6b.fp16.safetensors", w / "realesrgan-x4plus.fp16.safetensors",
                  "--alpha", "0.5", "-o", tmp_path / "out.safetensors")
    assert_one_line_error(proc, 1, "num_block is 6")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "abc", "0:1:0"])
def test_bad_alphas_are_usage_errors(pair: tuple[Path, Path], alpha: str, tmp_path: Path) -> None:
    pa, pb = pair
    proc = esrgan("blend", pa, pb, "--alpha", alpha, "-o", tmp_path / "out.safetensors")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_extrapolation_is_allowed_when_asked(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pa, pb = pair
    proc = esrgan("blend", pa, pb, "--alpha", "1.5", "--extrapolate", "-o", tmp_path / "out.safetensors")
    assert proc.returncode == 0, proc.stderr


def test_parse_alphas() -> None:
    assert parse_alphas("0.6") == [0.6]
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("0.2,0.8") == [0.2, 0.8]
    with pytest.raises(ValueError):
        parse_alphas("0:1:0.3")


def test_convert_and_info_of_each_legacy_file(shared: Path, tmp_path: Path) -> None:
    """Issue 3, must show 3: converted files show the right architecture and upscale identically."""
    rgb = read_image(next((shared / "testsets").glob("Set5/LR_bicubic/X4/bird*.png"))).rgb
    placement = choose_placement("cpu", "fp32")
    for src in sorted((shared / "weights/legacy").glob("*.pth")):
        out = tmp_path / f"{src.stem}.safetensors"
        proc = esrgan("convert", src, "-o", out)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(esrgan("info", out, "--json").stdout)
        assert info["config"] == {"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_block": 6,
                                  "num_grow": 32, "scale": 4, "unshuffle": 1}
        assert info["parameters"] == 4_467_779
        assert info["metadata"]["esrgan.source_sha256"] == sha256_of(src)
        original, _ = run_upscaler(Upscaler(load_weights(src), placement), rgb, 0, 0, np.float32)
        converted, _ = run_upscaler(Upscaler(load_weights(out), placement), rgb, 0, 0, np.float32)
        assert np.array_equal(original, converted), src.name


def test_info_text_and_models_list(tiny_weights: Path, tmp_path: Path) -> None:
    proc = esrgan("info", tiny_weights)
    assert proc.returncode == 0 and "RRDBNet x4 (1 blocks, 8 features, growth 4)" in proc.stdout
    env = {"HF_HOME": str(tmp_path / "hf"), "ESRGAN_CACHE": str(tmp_path / "cache")}
    listed = json.loads(esrgan("models", "list", "--json", env=env).stdout)
    assert {r["name"] for r in listed} >= {"esrgan-x4", "esrgan-psnr-x4", "compact-x4", "compact-psnr-x4"}
    # With an empty cache only the bundled models are usable offline.
    assert {r["name"] for r in listed if r["cached"]} == {"compact-real-x4", "compact-x4", "compact-psnr-x4"}
    assert [r["name"] for r in listed if r["default"]] == ["compact-real-x4"]
    offline = esrgan("models", "download", "esrgan-x4", env=env)
    assert offline.returncode == 1 and "Traceback" not in offline.stderr and "esrgan-x4" in offline.stderr
    bundled = esrgan("models", "download", "compact-x4", env=env)
    assert bundled.returncode == 0 and "compact-x4: ready" in bundled.stderr


def test_convert_refuses_non_safetensors_output(tiny_weights: Path, tmp_path: Path) -> None:
    proc = esrgan("convert", tiny_weights, "-o", tmp_path / "x.pth")
    assert proc.returncode == 2 and "safetensors" in proc.stderr


def test_convert_to_an_unwritable_name_is_one_line(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / ("x" * 300 + ".safetensors")  # too long for the file system, even for root
    proc = esrgan("convert", tiny_weights, "-o", out)
    assert_one_line_error(proc, 1, "cannot write there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


def test_convert_onto_its_own_input_is_refused(tiny_weights: Path) -> None:
    before = tiny_weights.read_bytes()
    proc = esrgan("convert", tiny_weights, "-o", tiny_weights)
    assert_one_line_error(proc, 1, "overwrite the input")
    assert tiny_weights.read_bytes() == before


def test_written_weights_name_no_folder_of_this_machine(tiny_weights: Path, tmp_path: Path) -> None:
    """Issue 26, item 10: a training config naming its data, VGG file and init checkpoint, and the absolute paths
    given to convert and blend, come out of every written file as bare file names."""
    from safetensors.torch import load_file, save_file
    from test_bundled import absolute_paths

    trained = tmp_path / "trained.safetensors"
    meta = load_weights(tiny_weights).metadata
    config = {"data": str(tmp_path / "data"), "init": "/home/someone/runs/p3/model_2400.safetensors",
              "perceptual_weights": "C:\\Users\\someone\\vgg19.safetensors", "val": None, "lr": 0.0001}
    save_file(load_file(str(tiny_weights)), str(trained), metadata={**meta, "esrgan.train_config": json.dumps(config)})
    converted, blended = tmp_path / "converted.safetensors", tmp_path / "blended.safetensors"
    assert esrgan("convert", trained, "-o", converted).returncode == 0
    assert esrgan("blend", trained, tiny_weights, "--alpha", "0.5", "-o", blended).returncode == 0
    for path in (converted, blended):
        assert absolute_paths(load_weights(path).metadata) == [], path.name
    kept = json.loads(load_weights(converted).metadata["esrgan.train_config"])
    assert kept == {**config, "data": "data", "init": "model_2400.safetensors",
                    "perceptual_weights": "vgg19.safetensors"}
    assert load_weights(blended).metadata["esrgan.blend.a"] == trained.name


def test_strip_local_paths_keeps_everything_that_is_not_an_absolute_path() -> None:
    from esrgan_cli.model.weights import strip_local_paths

    kept = {"esrgan.source": "p4/model_2400.safetensors", "esrgan.levels": "black 0.6/1.1/0.6 folded to 0 and 1",
            "esrgan.card": "weights/README.md in the esrgan repository", "hub": "hf:o/r/sub/m.pth@v1",
            "url": "see https://huggingface.co/o/r/resolve/main/m.pth", "slash": "/", "empty": "",
            "json": '{"a": [1, 2.5, null, "rel/x"], "b": {"c": "hub"}}'}
    assert strip_local_paths(kept) == kept
    cut = {"a": "/home/me/My Models/x.pth", "b": "~/w.pth", "c": "made from /tmp/a.pth and D:\\w\\b.pth, then tuned",
           "d": "\\\\server\\share\\m.pth", "e": '["/work/data", {"k": "/root/v.pth"}]'}
    assert strip_local_paths(cut) == {"a": "x.pth", "b": "w.pth", "c": "made from a.pth and b.pth, then tuned",
                                      "d": "m.pth", "e": '["data", {"k": "v.pth"}]'}
