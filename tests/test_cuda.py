"""The CUDA paths (issue 30): half precision against fp32, the fp16 overflow fallback, a real out-of-memory under a
per-process memory cap ending in halved tiles, channels-last weights and pinned uploads, and a few training steps in
fp16 and bf16. Every test skips on a machine without CUDA.

Only the public API (`esrgan_cli.load_model`, `Upscaler`) and the `esrgan` command are used, with the bundled
compact models and random models in the BasicSR layout (a state dict, as `load_model` documents).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

import esrgan_cli

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes with some texture: closer to a photo than noise, so PSNR means something."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(x / (7 + 3 * c) + y / (11 + c) + c) for c in range(3)], axis=2)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def random_rrdbnet(blocks: int = 2, feat: int = 16, grow: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ×4 RRDBNet in the BasicSR layout, initialised as BasicSR does (Kaiming × 0.1), with conv_last's
    bias at 0.5 so its output is not clipped flat."""
    gen = torch.Generator().manual_seed(seed)

    def conv(name: str, c_in: int, c_out: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
        std = math.sqrt(2.0 / (c_in * 9)) * scale
        return {f"{name}.weight": torch.randn(c_out, c_in, 3, 3, generator=gen) * std,
                f"{name}.bias": torch.zeros(c_out)}

    sd = conv("conv_first", 3, feat, 1.0)
    for b in range(blocks):
        for r in range(1, 4):
            for j in range(1, 6):
                sd |= conv(f"body.{b}.rdb{r}.conv{j}", feat + (j - 1) * grow, feat if j == 5 else grow)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        sd |= conv(name, feat, feat, 1.0)
    sd |= conv("conv_last", feat, 3, 1.0)
    sd["conv_last.bias"] = torch.full((3,), 0.5)
    return sd


def homogeneous_scaled(sd: dict[str, torch.Tensor], k: float) -> dict[str, torch.Tensor]:
    """Every activation k times larger, the same output (the network is positively homogeneous)."""
    out = {}
    for name, t in sd.items():
        t = t.float()
        if name.startswith("conv_first.") or (name.endswith(".bias") and not name.startswith("conv_last.")):
            t = t * k
        elif name == "conv_last.weight":
            t = t / k
        out[name] = t
    return out


def _bundled(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ROOT / "weights" / f"{name}.fp16.safetensors"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_matches_fp32(precision: Literal["fp16", "bf16"]) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    img = _picture(96, 80)
    full = esrgan_cli.load_model("compact-psnr-x4", device="cuda", precision="fp32").upscale(img, tile=0)
    half_up = esrgan_cli.load_model("compact-psnr-x4", device="cuda", precision=precision)
    assert half_up.placement.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    half = half_up.upscale(img, tile=0)
    assert _psnr(half, full) >= (40 if precision == "fp16" else 32)


def test_cuda_fp32_matches_cpu() -> None:
    img = _picture(40, 48, seed=1)
    cpu = esrgan_cli.load_model("compact-psnr-x4", device="cpu").upscale(img, tile=0)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = esrgan_cli.load_model("compact-psnr-x4", device="cuda", precision="fp32").upscale(img, tile=0)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert _psnr(gpu, cpu) >= 50


def test_fp16_overflow_is_redone_in_fp32() -> None:
    sd = _bundled("compact-psnr-x4")
    forced = esrgan_cli.load_model(homogeneous_scaled(sd, 2.0**16), device="cuda", precision="fp16")
    reference = esrgan_cli.load_model(sd, device="cuda", precision="fp32")
    img = _picture(48, 40, seed=2).astype(np.float32) / 255
    out = forced.upscale(img, tile=0)
    assert np.isfinite(out).all()
    assert forced.fp32_retries >= 1
    assert _psnr(out, reference.upscale(img, tile=0), 1.0) >= 50
    # Without the overflow nothing is redone.
    plain = esrgan_cli.load_model(sd, device="cuda", precision="fp16")
    plain.upscale(img, tile=0)
    assert plain.fp32_retries == 0


def test_out_of_memory_halves_the_tile() -> None:
    """A real CUDA out-of-memory (a per-process cap) in the middle of a run: the block is split and the image
    finishes, close to the uncapped output (tiles with 48 pixels of context)."""
    up = esrgan_cli.load_model("compact-psnr-x4", device="cuda", precision="fp16")
    img = _picture(768, 768, seed=3)
    whole = up.upscale(img, tile=0)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_allocated() + 192 * 2**20  # the whole 768² tail needs about 1.4 GiB in fp16
    windows: list[tuple[int, ...]] = []
    trunk = up.model.trunk

    def watched(x: torch.Tensor) -> torch.Tensor:
        windows.append(tuple(x.shape[-2:]))
        return trunk(x)

    up.model.trunk = watched
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        capped = up.upscale(img, tile=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        up.model.trunk = trunk
    assert len(windows) > 1 and max(windows[1:]) < windows[0]
    assert _psnr(capped, whole) >= 45


def test_a_failed_attempt_frees_its_memory_before_the_retry() -> None:
    """After an out-of-memory in the tail, the retry must start with the failed attempt's trunk output freed."""
    up = esrgan_cli.load_model("compact-psnr-x4", device="cuda", precision="fp16")
    img = _picture(512, 512, seed=7)
    trunk, tail = up.model.trunk, up.model.tail
    held: list[int] = []
    failed: list[bool] = []

    def watched_trunk(x: torch.Tensor) -> torch.Tensor:
        held.append(torch.cuda.memory_allocated())
        return trunk(x)

    def failing_tail(f: torch.Tensor) -> torch.Tensor:
        if not failed:
            failed.append(True)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")
        return tail(f)

    up.model.trunk, up.model.tail = watched_trunk, failing_tail
    try:
        up.upscale(img, tile=0)
    finally:
        up.model.trunk, up.model.tail = trunk, tail
    feat_bytes = 32 * (512 + 16) ** 2 * 2  # the first attempt's trunk output, fp16
    assert len(held) > 1
    assert held[1] - held[0] < feat_bytes // 2


def test_out_of_memory_at_the_smallest_tile_is_an_error() -> None:
    up = esrgan_cli.load_model("compact-psnr-x4", device="cuda", precision="fp16")
    img = _picture(256, 256, seed=4)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + 2**20) / total)
    try:
        with pytest.raises(esrgan_cli.OutOfMemoryError):
            up.upscale(img, tile=0)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def test_channels_last_weights_and_inputs_of_every_kind() -> None:
    up = esrgan_cli.load_model(random_rrdbnet(), device="cuda", precision="fp16")
    weight = up.model.conv_first.weight
    assert weight.is_cuda and weight.dtype == torch.float16
    assert weight.is_contiguous(memory_format=torch.channels_last)
    cpu = esrgan_cli.load_model(random_rrdbnet(), device="cpu")
    img = _picture(37, 29, seed=5)  # odd sides
    for arr in (img, img.astype(np.uint16) * 257, img.astype(np.float32) / 255, img[..., 0],
                np.dstack([img, np.full(img.shape[:2], 200, np.uint8)])):
        out, ref = up.upscale(arr, tile=16), cpu.upscale(arr, tile=16)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        peak = 1.0 if arr.dtype == np.float32 else float(np.iinfo(arr.dtype).max)
        assert _psnr(out, ref, peak) >= 40


def test_pil_image_on_cuda() -> None:
    from PIL import Image

    up = esrgan_cli.load_model("compact-psnr-x4", device="cuda")
    img = Image.fromarray(_picture(30, 34, seed=6))
    out = up.upscale(img, tile=0)
    assert out.size == (136, 120) and out.mode == "RGB"


@pytest.mark.parametrize(("stage", "precision"), [("psnr", "fp16"), ("gan", "bf16")])
def test_train_steps_on_cuda(tmp_path: Path, stage: str, precision: str) -> None:
    """A few real-world iterations of either stage on the GPU, with autocast (fp16 with loss scaling, or bf16)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(_picture(72, 64, seed=10 + i)).save(data / f"{i}.png")
    init = ROOT / "weights" / "compact-psnr-x4.fp16.safetensors"
    cmd = [sys.executable, "-m", "esrgan_cli", "train", "--stage", stage, "--data", str(data), "--out",
           str(tmp_path / "run"), "--iters", "4", "--batch-size", "2", "--patch-size", "32", "--device", "cuda",
           "--precision", precision, "--degradation", "real", "--workers", "0", "--log-every", "2", "-q",
           "--init", str(init)]
    if stage == "gan":
        cmd += ["--discriminator", "unet", "--perceptual-weights", "random", "--perceptual-layer", "conv2_2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "model_4.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log] == [2, 4]
    assert all(math.isfinite(e["loss"]) for e in log)
    out = esrgan_cli.load_model(tmp_path / "run" / "model_4.safetensors", device="cuda").upscale(
        _picture(20, 20), tile=0)
    assert out.shape == (80, 80, 3)
