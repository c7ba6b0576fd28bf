"""Levels stay true: flat black and white come out as themselves, at the border too, and a ramp keeps its mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, esrgan

import esrgan_cli
from esrgan_cli.errors import WeightsError
from esrgan_cli.model.arch import RRDBConfig, RRDBNet, init_interpolating
from esrgan_cli.model.levels import measure_levels, true_levels
from esrgan_cli.model.weights import build_model, load_weights, save_safetensors

from conftest import tiny_model

BUNDLED = [m.name for m in esrgan_cli.available_models() if m.bundled]


def test_every_bundled_model_is_checked() -> None:
    assert {"compact-real-x4", "compact-x4", "compact-psnr-x4"} <= set(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_keep_black_white_and_a_ramps_mean(name: str) -> None:
    up = esrgan_cli.load_model(name, device="cpu", precision="fp32")
    # Every output pixel, border included: the model's zero padding used to pull a white border 43/255 down.
    black = up.upscale(np.zeros((20, 28, 3), np.uint8))
    white = up.upscale(np.full((20, 28, 3), 255, np.uint8))
    assert int(black.max()) <= 1 and int(white.min()) >= 254
    deep_black = up.upscale(np.zeros((20, 28, 3), np.uint16))
    assert int(deep_black.max()) <= 257  # 1/255 of the 16-bit range
    for low, high in ((0, 255), (96, 160)):
        ramp = np.broadcast_to(np.linspace(low, high, 48).round().astype(np.uint8)[None, :, None], (24, 48, 3))
        out = up.upscale(np.ascontiguousarray(ramp))
        assert abs(float(out.mean()) - float(ramp.mean())) <= 1.0, (low, high, out.mean(), ramp.mean())


def _off_levels(tmp_path: Path) -> Path:
    """A tiny upscaler (bilinear-like start, random trunk) whose output is dimmed and lifted, as a GAN stage can."""
    model = init_interpolating(RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow=4)), scale=0.1, seed=0).eval()
    with torch.no_grad():
        model.conv_last.weight.mul_(0.9)
        model.conv_last.bias.add_(0.05)
    path = tmp_path / "off.safetensors"
    save_safetensors(model.state_dict(), model.config, path)
    return path


def test_true_levels_folds_an_exact_gain_and_offset_into_the_last_layer(tmp_path: Path) -> None:
    weights = load_weights(_off_levels(tmp_path))
    before = measure_levels(weights)
    assert before.worst() > 0.03
    fixed = true_levels(weights)
    assert measure_levels(fixed).worst() < 1e-5
    # Everything else is as it was, and the whole output is the old one under the measured per-channel line.
    changed = {k for k in weights.state_dict if not torch.equal(weights.state_dict[k], fixed.state_dict[k])}
    assert changed == {"conv_last.weight", "conv_last.bias"}
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        old, new = build_model(weights)(x), build_model(fixed)(x)
    black = torch.tensor(before.black)[:, None, None]
    white = torch.tensor(before.white)[:, None, None]
    assert torch.allclose(new[0], (old[0] - black) / (white - black), atol=1e-5)


def test_a_model_without_contrast_is_refused(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.conv_last.weight.zero_()
    path = tmp_path / "flat.safetensors"
    save_safetensors(model.state_dict(), model.config, path)
    with pytest.raises(WeightsError, match="cannot be corrected"):
        true_levels(load_weights(path))
    proc = esrgan("convert", path, "-o", tmp_path / "out.safetensors", "--true-levels")
    assert_one_line_error(proc, 1, "cannot be corrected")
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_true_levels_writes_a_corrected_model_and_says_what_it_found(tmp_path: Path) -> None:
    out = tmp_path / "fixed.safetensors"
    proc = esrgan("convert", _off_levels(tmp_path), "-o", out, "--true-levels", "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "levels: black came out as" in proc.stderr
    fixed = load_weights(out)
    assert measure_levels(fixed).worst() < 1e-5
    assert "folded to 0 and 1" in fixed.metadata["esrgan.levels"]
