"""Must-show checks with the real pretrained weights in ../shared (skipped without it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.nn import functional as F

from esrgan_cli.defaults import DEFAULT_OVERLAP, EDGE_PAD
from esrgan_cli.image.decode import read_image
from esrgan_cli.model.weights import load_weights
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import ROOT, psnr, run_upscaler

X4PLUS = "weights/realesrgan-x4plus.fp16.safetensors"
ANIME = "weights/realesrgan-x4plus-anime-6b.fp16.safetensors"


def reference_rrdbnet(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The paper's x4 generator written out functionally from the raw file, sharing no code with esrgan_cli."""

    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.2)

    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    first = conv("conv_first", x)
    t = first
    for b in range(blocks):
        block_in = t
        for k in (1, 2, 3):
            feats = [t]
            for j in (1, 2, 3, 4):
                feats.append(lrelu(conv(f"body.{b}.rdb{k}.conv{j}", torch.cat(feats, 1))))
            t = conv(f"body.{b}.rdb{k}.conv5", torch.cat(feats, 1)) * 0.2 + t
        t = t * 0.2 + block_in
    feat = first + conv("conv_body", t)
    for up in ("conv_up1", "conv_up2"):
        feat = lrelu(conv(up, F.interpolate(feat, scale_factor=2, mode="nearest")))
    return conv("conv_last", lrelu(conv("conv_hr", feat)))


def lr_image(shared: Path, name: str) -> Path:
    return next((shared / "testsets").glob(f"Set*/LR_bicubic/X4/{name}x4.png"))


@pytest.fixture(scope="module")
def x4plus(shared: Path) -> Upscaler:
    return Upscaler(load_weights(shared / X4PLUS), choose_placement("cpu", "fp32"))


def test_untiled_output_equals_an_independent_reference(shared: Path, x4plus: Upscaler, tmp_path: Path) -> None:
    """Must show 1: our untiled fp32 output vs the functional reference, at least 60 dB."""
    src = lr_image(shared, "butterfly")
    raw = np.asarray(Image.open(src).convert("RGB"), np.float32) / 255
    sd = {k: v.float() for k, v in load_file(str(shared / X4PLUS)).items()}
    # The engine's edge handling, as documented: EDGE_PAD reflected pixels past every edge, cropped off after.
    padded = np.pad(raw, ((EDGE_PAD, EDGE_PAD), (EDGE_PAD, EDGE_PAD), (0, 0)), mode="reflect")
    with torch.inference_mode():
        ref = reference_rrdbnet(sd, torch.from_numpy(padded.transpose(2, 0, 1).copy())[None])
    e = 4 * EDGE_PAD
    ref = ref.clamp(0, 1)[0].permute(1, 2, 0).numpy()[e:-e, e:-e]
    ours, calls = run_upscaler(x4plus, read_image(src).rgb, 0, 0, np.float32)
    assert calls == 1
    measured = psnr(ours, ref)
    print(f"\n[must-show 1] untiled fp32 vs independent reference, {src.name}: {measured:.2f} dB")
    assert measured >= 60

    # And through the command line: the PNG is the reference rounded to 8 bits.
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, "-m", "esrgan_cli", "upscale", str(src), "-o", str(out), "--model", str(shared / X4PLUS),
         "--tile", "0", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    written = np.asarray(Image.open(out), np.float32)
    assert np.abs(written - np.rint(ref * 255)).max() <= 1


@pytest.mark.parametrize("name", ["bridge", "baboon"])  # the two hardest of Set5/Set14 for tiling
def test_tile_64_with_default_overlap_matches_untiled(
    shared: Path, x4plus: Upscaler, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Must show 2: --tile 64 with the default overlap vs the untiled output, at least 45 dB.

    At --tile 64 these images' trunk runs whole and only the tail is tiled, which is exact; the trunk tiled at 64
    too (what larger images get) is checked against 45 dB."""
    rgb = read_image(lr_image(shared, name)).rgb
    whole, _ = run_upscaler(x4plus, rgb, 0, 0, np.uint8)
    staged, calls = run_upscaler(x4plus, rgb, 64, DEFAULT_OVERLAP, np.uint8)
    # Exact up to float rounding, which may differ between conv sizes on other hardware.
    assert calls == 1 and np.abs(staged.astype(int) - whole).max() <= 1
    monkeypatch.setattr(x4plus, "tile_sizes", lambda *args: (64, 64))
    tiled, calls = run_upscaler(x4plus, rgb, 64, DEFAULT_OVERLAP, np.uint8)
    assert calls == 4
    measured = psnr(tiled, whole, peak=255)
    print(f"\n[must-show 2] trunk tiles of 64, overlap {DEFAULT_OVERLAP}, {name} (8-bit outputs): {measured:.2f} dB")
    assert measured >= 45


def test_legacy_files_give_the_same_image(shared: Path) -> None:
    """Must show 3: each legacy layout upscales to the same image as the safetensors file (at least 50 dB)."""
    rgb = read_image(lr_image(shared, "bird")).rgb
    placement = choose_placement("cpu", "fp32")
    ref, _ = run_upscaler(Upscaler(load_weights(shared / ANIME), placement), rgb, 0, 0, np.float32)
    for path in sorted((shared / "weights/legacy").glob("*.pth")):
        out, _ = run_upscaler(Upscaler(load_weights(path), placement), rgb, 0, 0, np.float32)
        measured = psnr(out, ref)
        print(f"\n[must-show 3] {path.name} vs safetensors: {measured:.2f} dB")
        assert measured >= 50, path.name
