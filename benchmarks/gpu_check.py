#!/usr/bin/env python3
"""Issue 30 on a lent GPU, in one run: prove the CUDA path, measure its speed, train the default architecture there.

Everything runs in priority order under one time budget (`--budget`, seconds); each step is recorded in
OUT/results.json as soon as it ends (written to a temp file, then renamed), a failed step is recorded with its error
and the next one runs, and a step that no longer fits its part's time is recorded as skipped.

  1. correctness  fp16 against fp32 on Set14 LR (x4plus), CPU fp32 against CUDA fp32 (TF32 on, then off), a forced
                  fp16 overflow that must be redone in fp32, a real CUDA out-of-memory under a per-process memory cap
                  that must end in halved tiles, and the CUDA tests (tests/test_cuda.py and the engine/API tests,
                  run beside the checks above)
  2. speed        benchmarks/bench_upscale.py at 1024² (esrgan against the RealESRGANer-style baseline, tiles 0 and
                  512), the share of the H200's dense fp16 peak, a 4096² input through the library (wall time, peak
                  memory), the default model's images/s at 1024²; then variants: bf16, CUDA graphs, torch.compile
  3. training     it/s of the PSNR and GAN stages at batch 16, patch 128, for the compact (4 blocks, 32, 16) and the
                  x4plus (23, 64, 32) architectures; then a real-world run of the compact architecture for what is
                  left: PSNR stage distilled from x4plus (0.5 teacher, levels term), from compact-psnr-x4; GAN stage
                  from it (U-Net discriminator, L1 of VGG19 conv3_4 features, pixel 1, perceptual 1 in ImageNet units,
                  GAN 0.1). Its checkpoints come back as fp16 safetensors.

OUT holds at most 7 files: results.json, gpu_check.log, train-log.jsonl and up to 4 checkpoints. Work files go to
--work (default: a temporary folder).

    python3 benchmarks/gpu_check.py --prepare --shared ../shared   # here, once: the .gpu/ folder the run carries
    python3 benchmarks/gpu_check.py --out "$OUT" --budget 520      # on the GPU machine, from the repository root
    python3 benchmarks/gpu_check.py --out /tmp/gpu_out --tiny      # the same steps at tiny sizes, on the CPU

Only the public API (`esrgan_cli.load_model`, `Upscaler`), the `esrgan` command (`python3 -m esrgan_cli`) and
benchmarks/bench_upscale.py are used, plus the few `Upscaler` attributes named under INTERNALS below.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the package is not installed on the GPU machine: PYTHONPATH=$PWD does it

# ---- INTERNALS: what this script uses beyond esrgan_cli.__all__ and the command line (update after a refactor) ----
# No esrgan_cli module is imported by name. These attributes of an `Upscaler` (esrgan_cli/upscale/engine.py) are read:
UPSCALER_MODEL = "model"  # the RRDBNet on the device; its .trunk(x) and .tail(f) are the engine's two stages
UPSCALER_FP32_RETRIES = "fp32_retries"  # how many blocks were redone in fp32 after a half-precision overflow
UPSCALER_UPSCALE_INTO = "upscale_into"  # (image float32 H×W×C, canvas, tile, overlap) -> blocks run
# Bundled files, relative to the repository root (the package maps esrgan_cli.bundled to weights/):
BUNDLED_DEFAULT = "weights/compact-real-x4.fp16.safetensors"
BUNDLED_PSNR = "weights/compact-psnr-x4.fp16.safetensors"
# ------------------------------------------------------------------------------------------------------------------

X4PLUS_MACS = 17_926_848  # multiply-adds per input pixel, 23-block x4 (REFERENCE.md)
COMPACT_MACS = 1_074_528  # 4 blocks, 32 features, growth 16 (weights/README.md)
H200_FP16_DENSE_TFLOPS = 989.0
VGG_FILE = "vgg19-imagenet-conv1_1-conv3_4.caffe-bgr.safetensors"
X4PLUS_FILE = "realesrgan-x4plus.fp16.safetensors"
CAFFE_SCALE = 57.6  # caffe-bgr VGG inputs (0..255, no std) are about 255 × 0.226 times the ImageNet-normalised ones
HELD_OUT = 20  # the first BSD200 images by name: the real-world evaluation set, never trained on, never carried


@dataclass(frozen=True)
class Sizes:
    """Every size and count the run uses: FULL on the GPU, TINY for the CPU smoke run."""

    set14_images: int  # fp16 vs fp32 (0: all 14)
    set14_crop: int  # 0: whole LR images
    cpu_images: int
    cpu_crop: int
    overflow_images: int
    oom_side: int
    oom_model: str  # x4plus, or psnr (the bundled compact-psnr-x4)
    oom_caps_mib: str  # memory each capped run may use beyond the model, MiB, comma-separated
    bench_sizes: str
    bench_tiles: str
    bench_repeats: int
    big_side: int
    compact_side: int
    compact_seconds: float
    batch: int
    patch: int
    measure_iters: int  # per it/s run (x4plus: 2/3 of it)
    measure_warm: int  # iterations left out of the rate
    log_every: int
    workers: int
    part1_s: float
    part2_s: float
    margin_s: float  # left at the end for converting checkpoints and the summary


FULL = Sizes(set14_images=0, set14_crop=0, cpu_images=2, cpu_crop=96, overflow_images=2, oom_side=1024,
             oom_model="x4plus", oom_caps_mib="1024,2048,4096", bench_sizes="1024", bench_tiles="0,512",
             bench_repeats=3, big_side=4096, compact_side=1024, compact_seconds=4.0, batch=16, patch=128,
             measure_iters=30, measure_warm=10, log_every=5, workers=6, part1_s=85, part2_s=110, margin_s=25)
TINY = Sizes(set14_images=2, set14_crop=24, cpu_images=1, cpu_crop=16, overflow_images=1, oom_side=160,
             oom_model="psnr", oom_caps_mib="0", bench_sizes="32", bench_tiles="0,16", bench_repeats=1, big_side=64,
             compact_side=64, compact_seconds=1.0, batch=2, patch=32, measure_iters=6, measure_warm=2, log_every=2,
             workers=0, part1_s=150, part2_s=150, margin_s=10)


# ---- results and log ------------------------------------------------------------------------------------------

class Run:
    """The clock, the log and results.json."""

    def __init__(self, out: Path, budget: float, sizes: Sizes, tiny: bool) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.sizes = sizes
        self.tiny = tiny
        self.tiny_compile = False
        self.data: dict[str, Any] = {"meta": {"budget_s": budget, "tiny": tiny, "sizes": asdict(sizes),
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        self._log = open(out / "gpu_check.log", "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def now(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, message: str) -> None:
        line = f"[{self.now():6.1f}s] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def put(self, key: str, value: Any) -> None:
        self.data["steps"][key] = value
        self.write()

    def write(self) -> None:
        self.data["meta"]["elapsed_s"] = round(self.now(), 1)
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(_plain(self.data), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "results.json")

    def step(self, name: str, fn: Callable[[], dict[str, Any]], *, until: float, need: float = 0.0,
             cuda: bool = False) -> dict[str, Any]:
        """Run one step if it fits before `until` (monotonic) with `need` seconds; record it whatever happens."""
        rec: dict[str, Any]
        if cuda and not HAVE_CUDA:
            rec = {"status": "skipped", "reason": "needs CUDA (none here)"}
        elif until - time.monotonic() < need:
            rec = {"status": "skipped", "reason": f"no time: {until - time.monotonic():.0f} s left, needs {need:.0f}"}
        else:
            self.log(f"-- {name}")
            start = time.monotonic()
            try:
                rec = {"status": "ok", **fn()}
            except Exception as e:  # noqa: BLE001 - a failed step is recorded and the run goes on
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                       "traceback": traceback.format_exc()[-4000:]}
            rec["seconds"] = round(time.monotonic() - start, 2)
            _free_gpu()
        self.log(f"   {name}: {rec['status']} {_brief(rec)}")
        self.put(name, rec)
        return rec


def _plain(value: Any) -> Any:
    """JSON-safe: inf/nan as strings, numpy scalars as Python numbers, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _brief(rec: dict[str, Any]) -> str:
    if rec["status"] == "failed":
        return rec["error"][:300]
    if rec["status"] == "skipped":
        return rec["reason"]
    keys = [k for k in rec if k in ("pass", "summary")]
    return " ".join(f"{k}={rec[k]}" for k in keys)[:300]


# ---- helpers ----------------------------------------------------------------------------------------------------

HAVE_CUDA = False


def _free_gpu() -> None:
    gc.collect()
    if HAVE_CUDA:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def shared() -> Path:
    return Path(os.environ["ESRGAN_SHARED"])


def x4plus_path() -> Path:
    return shared() / "weights" / X4PLUS_FILE


def read_rgb(path: Path, crop: int = 0) -> np.ndarray:
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    if crop:
        h, w = img.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        img = img[top:top + crop, left:left + crop]
    return np.ascontiguousarray(img)


def test_picture(side: int) -> np.ndarray:
    """A side×side natural picture: Set14 LR barbara (comic if absent) enlarged by Lanczos, cropped at the centre."""
    from PIL import Image

    folder = shared() / "testsets/Set14/LR_bicubic/X4"
    files = sorted(folder.glob("*.png"))
    if not files:
        return np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    pick = next((f for f in files if f.name.startswith("barbara")), files[0])
    img = Image.open(pick).convert("RGB")
    factor = side / min(img.size)
    if factor > 1:
        img = img.resize((math.ceil(img.width * factor), math.ceil(img.height * factor)), Image.Resampling.LANCZOS)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return np.ascontiguousarray(np.asarray(img.crop((left, top, left + side, top + side))))


def set14_lr(count: int) -> list[Path]:
    files = sorted((shared() / "testsets/Set14/LR_bicubic/X4").glob("*.png"))
    return files[:count] if count else files


def sync() -> None:
    if HAVE_CUDA:
        import torch

        torch.cuda.synchronize()


def device() -> str:
    return "cuda" if HAVE_CUDA else "cpu"


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cmd(cmd: list[str], timeout: float, log: Path | None = None) -> tuple[int | None, str]:
    """Run `cmd` from the repository root; (exit status or None on timeout, its output). Killed at the timeout."""
    out = open(log, "w", encoding="utf-8") if log else tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
    with out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        out.flush()
        out.seek(0) if not log else None
        text = log.read_text(encoding="utf-8", errors="replace") if log else out.read()
    return rc, text


# ---- setup ------------------------------------------------------------------------------------------------------

def step_environment() -> dict[str, Any]:
    import platform

    import PIL
    import torch
    from PIL import features

    import esrgan_cli

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "esrgan": esrgan_cli.__version__, "esrgan_file": esrgan_cli.__file__, "pillow": PIL.__version__,
        "pillow_webp": features.check("webp"), "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "esrgan_shared": os.environ.get("ESRGAN_SHARED"),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if HAVE_CUDA:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    # The bundled models resolve from a source checkout (weights/ beside the package) without an install?
    try:
        models = esrgan_cli.available_models()
        info["default_model"] = models[0].name
        info["bundled_resolve"] = True
        esrgan_cli.load_model(None, device="cpu")
    except Exception as e:  # noqa: BLE001
        info["bundled_resolve"] = False
        info["bundled_error"] = f"{type(e).__name__}: {e}"[:500]
    files = {"x4plus": x4plus_path(), "vgg": shared() / "vgg" / VGG_FILE,
             "set14_lr": shared() / "testsets/Set14/LR_bicubic/X4", "trainsets": shared() / "trainsets"}
    info["files_present"] = {k: v.exists() for k, v in files.items()}
    info["train_images"] = len(train_images())
    return info


def try_install() -> str:
    """Only when the bundled models do not resolve from the checkout: an editable install, offline."""
    rc, text = run_cmd([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], 120)
    return f"pip install -e . exit {rc}: {text[-300:]}"


def train_images() -> list[Path]:
    exts = {".png", ".webp", ".bmp", ".jpg", ".jpeg"}
    root = shared() / "trainsets"
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in exts) if root.is_dir() else []


# ---- part 1: correctness ----------------------------------------------------------------------------------------

def _no_autotune() -> None:
    """Many image shapes, each a new cuDNN benchmark: off for the correctness checks (the Upscaler turns it on)."""
    import torch

    torch.backends.cudnn.benchmark = False


def step_fp16_vs_fp32(s: Sizes) -> dict[str, Any]:
    import esrgan_cli

    half = esrgan_cli.load_model(x4plus_path(), device=device(), precision="fp16")
    full = esrgan_cli.load_model(x4plus_path(), device=device(), precision="fp32")
    _no_autotune()
    per: dict[str, float] = {}
    for f in set14_lr(s.set14_images):
        img = read_rgb(f, s.set14_crop)
        per[f.stem] = psnr(half.upscale(img, tile=0), full.upscale(img, tile=0))
    finite = [v for v in per.values() if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else math.inf
    worst = min(per.values())
    rec: dict[str, Any] = {"per_image_db": {k: round(v, 2) for k, v in per.items()}, "mean_db": round(mean, 2),
                           "min_db": round(worst, 2), "precision_used": str(half.placement.dtype),
                           "pass": bool(mean >= 40 and worst >= 40),
                           "summary": f"mean {mean:.2f} dB, min {worst:.2f} dB over {len(per)} images"}
    if not HAVE_CUDA:
        rec["note"] = "CPU: fp16 is never used there (both ran fp32); plumbing only"
    return rec


def step_cpu_vs_cuda(s: Sizes) -> dict[str, Any]:
    import torch

    import esrgan_cli

    cpu = esrgan_cli.load_model(x4plus_path(), device="cpu", precision="fp32")
    gpu = esrgan_cli.load_model(x4plus_path(), device="cuda", precision="fp32")
    _no_autotune()
    images = {f.stem: read_rgb(f, s.cpu_crop) for f in set14_lr(s.cpu_images + 3)[3:]}  # coastguard, comic: textured
    cpu_out = {k: cpu.upscale(v, tile=0) for k, v in images.items()}
    rec: dict[str, Any] = {"crop": s.cpu_crop}
    old = torch.backends.cudnn.allow_tf32
    for label, tf32 in (("tf32_default", old), ("tf32_off", False)):
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            rec[label] = {k: round(psnr(gpu.upscale(v, tile=0), cpu_out[k]), 2) for k, v in images.items()}
        finally:
            torch.backends.cudnn.allow_tf32 = old
    rec["cudnn_allow_tf32_default"] = old
    default_min = min(rec["tf32_default"].values())
    strict_min = min(rec["tf32_off"].values())
    rec["pass"] = bool(default_min >= 45)
    rec["summary"] = (f"min {default_min:.1f} dB as shipped (TF32 {'on' if old else 'off'}), "
                      f"{strict_min:.1f} dB TF32 off")
    return rec


def scaled_state_dict(path: Path, k: float) -> dict[str, Any]:
    """The model's weights with every activation k times larger and the same output: the network is positively
    homogeneous (convs, LeakyReLU, nearest upsampling, residual scaling), so conv_first and every bias but the last
    are scaled by k and conv_last's weight by 1/k. With k a power of 2 the fp32 arithmetic is exactly scaled."""
    import torch
    from safetensors.torch import load_file

    sd = {name: t.to(torch.float32) for name, t in load_file(str(path)).items()}
    for name in sd:
        if name.startswith("conv_first.") or (name.endswith(".bias") and not name.startswith("conv_last.")):
            sd[name] = sd[name] * k
        elif name == "conv_last.weight":
            sd[name] = sd[name] / k
    return sd


def step_overflow(s: Sizes) -> dict[str, Any]:
    import esrgan_cli

    k = 2.0**16  # any activation above 1 in magnitude overflows fp16 (max 65504)
    forced = esrgan_cli.load_model(scaled_state_dict(x4plus_path(), k), device=device(), precision="fp16")
    ref = esrgan_cli.load_model(x4plus_path(), device=device(), precision="fp32")
    scaled32 = esrgan_cli.load_model(scaled_state_dict(x4plus_path(), k), device=device(), precision="fp32")
    _no_autotune()
    rec: dict[str, Any] = {"k": k, "images": {}}
    ok = True
    for f in set14_lr(s.overflow_images):
        img = read_rgb(f, s.set14_crop)
        out = forced.upscale(img.astype(np.float32) / 255.0, tile=0)  # float output: non-finite would show
        finite = bool(np.isfinite(out).all())
        want = ref.upscale(img.astype(np.float32) / 255.0, tile=0)
        same32 = scaled32.upscale(img.astype(np.float32) / 255.0, tile=0)
        db = psnr(out, want, 1.0)
        rec["images"][f.stem] = {"finite": finite, "db_vs_fp32_original": round(db, 2),
                                 "db_scaled_fp32_vs_original_fp32": round(psnr(same32, want, 1.0), 2),
                                 "max_abs_vs_fp32": float(np.abs(out - want).max())}
        ok = ok and finite and db >= 45
    retries = getattr(forced, UPSCALER_FP32_RETRIES)
    rec["fp32_retries"] = retries
    rec["pass"] = bool(ok and retries > 0)
    rec["summary"] = f"fp32 retries {retries}, " + ", ".join(
        f"{n} {v['db_vs_fp32_original']} dB" for n, v in rec["images"].items())
    if not HAVE_CUDA:
        rec["note"] = "CPU: fp16 is never used there, so no overflow to recover from; checks the scaled model only"
        rec["pass"] = bool(ok)
    return rec


class _TrunkWatch:
    """Wraps the model's trunk: records each window's size and the device memory held when it starts; with
    `fail_over` (CPU smoke run) it raises a CUDA out-of-memory error for windows of more pixels than that."""

    def __init__(self, upscaler: Any, fail_over: int = 0) -> None:
        self.model = getattr(upscaler, UPSCALER_MODEL)
        self.original = self.model.trunk
        self.fail_over = fail_over
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> _TrunkWatch:
        import torch

        def trunk(x: Any) -> Any:
            entry: dict[str, Any] = {"window": list(x.shape[-2:])}
            if HAVE_CUDA:
                entry["allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20)
            self.calls.append(entry)
            if self.fail_over and x.shape[-1] * x.shape[-2] > self.fail_over:
                entry["simulated_oom"] = True
                raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory (CPU smoke run)")
            return self.original(x)

        self.model.trunk = trunk
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.trunk = self.original


def step_oom(s: Sizes) -> dict[str, Any]:
    """The uncapped untiled output, then the same image with --tile auto under per-process memory caps (model +
    each of `s.oom_caps_mib`): auto sizes tiles from the free memory, which ignores the cap, so the whole image is
    tried first, runs out of memory, and must be halved until it fits. On the CPU an out-of-memory is simulated."""
    import torch

    import esrgan_cli

    model = x4plus_path() if s.oom_model == "x4plus" else ROOT / BUNDLED_PSNR
    up = esrgan_cli.load_model(model, device=device(), precision="fp16")
    _no_autotune()
    img = test_picture(s.oom_side).astype(np.float32) / 255.0
    run = getattr(up, UPSCALER_UPSCALE_INTO)
    ref = np.empty((img.shape[0] * 4, img.shape[1] * 4, 3), np.uint8)
    if HAVE_CUDA:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.monotonic()
    run(img, ref, 0, 48)
    sync()
    rec: dict[str, Any] = {"side": s.oom_side, "model": model.name, "uncapped_s": round(time.monotonic() - start, 2),
                           "runs": {}}
    if HAVE_CUDA:
        rec["uncapped_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        # What --tile auto assumes a whole pass needs per input pixel (device.py's estimate, fp16) against the peak.
        f, g = (64, 32) if s.oom_model == "x4plus" else (32, 16)
        estimate = 2 * (7 * f + 2 * (f + 4 * g)) * 1.25 + 2 * 2.5 * f * 16
        pixels = (s.oom_side + 16) ** 2  # with the reflected edge
        rec["peak_bytes_per_input_pixel"] = round((torch.cuda.max_memory_allocated() - before) / pixels)
        rec["estimate_bytes_per_input_pixel"] = estimate
    ok = False
    for extra in (int(c) for c in s.oom_caps_mib.split(",")):
        _free_gpu()
        out = np.zeros_like(ref)
        entry: dict[str, Any] = {}
        fail_over = 0
        if HAVE_CUDA:
            total = torch.cuda.get_device_properties(0).total_memory
            base = torch.cuda.memory_allocated()
            cap = base + extra * 2**20
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.set_per_process_memory_fraction(cap / total)
            entry.update(model_mib=round(base / 2**20), cap_mib=round(cap / 2**20))
        else:
            fail_over = (s.oom_side * 7 // 8) ** 2  # the whole image fails, its halves (with context) fit
            entry["simulated"] = f"windows over {fail_over} pixels raise torch.cuda.OutOfMemoryError"
        watch = _TrunkWatch(up, fail_over)
        try:
            with watch:
                start = time.monotonic()
                entry["blocks_run"] = run(img, out, None, 48)  # tile None (auto)
                sync()
                entry["seconds"] = round(time.monotonic() - start, 2)
        except Exception as e:  # noqa: BLE001 - esrgan's OutOfMemoryError at the smallest tile is a result too
            entry["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            if HAVE_CUDA:
                torch.cuda.set_per_process_memory_fraction(1.0)
                entry["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        windows = watch.calls
        entry["trunk_windows"] = len(windows)
        entry["first_windows"] = windows[:12]
        entry["halved"] = len(windows) > 1
        if "error" not in entry:
            db = psnr(out, ref)
            entry["db_vs_uncapped"] = db
            entry["max_abs_diff"] = int(np.abs(out.astype(int) - ref.astype(int)).max())
            ok = ok or (entry["halved"] and db >= 45)
        if HAVE_CUDA and len(windows) > 1:
            # Memory still held when the first retry starts, over what the first try started with: the failed
            # attempt's tensors, if the exception's frames keep them alive during the retry.
            entry["held_at_first_retry_mib"] = windows[1]["allocated_mib"] - windows[0]["allocated_mib"]
            entry["held_max_mib"] = max(w["allocated_mib"] for w in windows) - windows[0]["allocated_mib"]
        rec["runs"][f"+{extra}MiB" if HAVE_CUDA else "simulated"] = entry
    rec["pass"] = ok
    rec["summary"] = "; ".join(
        f"{k}: {v['trunk_windows']} windows, " + (v["error"][:80] if "error" in v else
                                                  f"{v['db_vs_uncapped']:.1f} dB") +
        (f", held {v['held_at_first_retry_mib']} MiB at retry" if "held_at_first_retry_mib" in v else "")
        for k, v in rec["runs"].items())
    return rec


def start_pytest(work: Path, tests: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = work / "pytest.txt"
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=open(log, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def finish_pytest(proc: subprocess.Popen[bytes], log: Path, until: float) -> dict[str, Any]:
    try:
        rc: int | None = proc.wait(timeout=max(1.0, until - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    text = log.read_text(encoding="utf-8", errors="replace")
    counts: dict[str, int] = {}
    failed: list[str] = []
    for line in text.splitlines():
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"):
            if f" {word}" in line and "::" in line:
                counts[word.lower()] = counts.get(word.lower(), 0) + 1
                if word in ("FAILED", "ERROR"):
                    failed.append(line.strip()[:200])
                break
    tail = [ln for ln in text.splitlines()[-40:] if ln.strip()]
    return {"exit": rc, "timed_out": rc is None, "counts": counts, "failed": failed[:20],
            "summary_line": tail[-1][:300] if tail else "", "output_tail": "\n".join(tail)[-3000:],
            "pass": rc == 0, "summary": f"exit {rc} {counts}"}


# ---- part 2: speed ----------------------------------------------------------------------------------------------

def step_bench(s: Sizes, work: Path, until: float) -> dict[str, Any]:
    out = work / "bench.json"
    image = shared() / "testsets/Set14/LR_bicubic/X4/barbarax4.png"
    cmd = [sys.executable, "benchmarks/bench_upscale.py", "--device", device(), "--precision",
           "fp16" if HAVE_CUDA else "fp32", "--sizes", s.bench_sizes, "--tiles", s.bench_tiles, "--repeats",
           str(s.bench_repeats), "--model", str(x4plus_path()), "--image", str(image), "--json", str(out)]
    rc, text = run_cmd(cmd, until - time.monotonic(), work / "bench.txt")
    rec: dict[str, Any] = {"command": " ".join(cmd[1:]), "exit": rc, "output_tail": text[-2500:]}
    if out.is_file():
        data = json.loads(out.read_text())
        rec["info"] = data["info"]
        rows = data["rows"]
    else:  # timed out or failed: the rows it printed as it went
        import re

        rows = [{"mode": m[1], "size": int(m[2]), "tile": m[3], "wall_s": float(m[4]), "gflops": float(m[5])}
                for m in re.finditer(r"^(esrgan|baseline) (\d+)² tile (\S+): ([\d.]+) s, (\d+) GFLOP/s", text, re.M)]
        rec["note"] = f"no JSON (exit {rc}): rows parsed from its progress lines"
        if not rows:
            raise RuntimeError(f"bench_upscale gave no result (exit {rc}): {text[-600:]}")
    if not rows:
        raise RuntimeError(f"bench_upscale measured nothing (exit {rc}): {text[-800:]}")
    rec["rows"] = rows
    peak = H200_FP16_DENSE_TFLOPS * 1e3
    by = {(r["mode"], str(r["tile"])): r for r in rows}
    speedups = {}
    for tile in s.bench_tiles.split(","):
        e, b = by.get(("esrgan", tile)), by.get(("baseline", tile))
        if e and b:
            speedups[tile] = round(b["wall_s"] / e["wall_s"], 2)
    rec["speedup_vs_baseline"] = speedups
    rec["share_of_h200_fp16_peak"] = {f"{r['mode']}_tile{r['tile']}": round(r["gflops"] / peak, 4) for r in rows}
    last_tile = s.bench_tiles.split(",")[-1]
    if last_tile in speedups:
        rec["pass"] = bool(speedups[last_tile] >= 3) if HAVE_CUDA else None
    e0 = by.get(("esrgan", "0"))
    rec["summary"] = (f"speed-up tile {last_tile}: {speedups.get(last_tile)}x; esrgan untiled "
                      f"{e0['gflops'] / 1e3 if e0 else float('nan'):.1f} TFLOP/s")
    return rec


def step_big(s: Sizes) -> dict[str, Any]:
    import torch

    import esrgan_cli

    up = esrgan_cli.load_model(x4plus_path(), device=device(), precision="fp16")
    img = test_picture(s.big_side)
    rec: dict[str, Any] = {"side": s.big_side, "runs_s": []}
    for i in range(2):
        if HAVE_CUDA:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.monotonic()
        out = up.upscale(img)  # tile: auto, from the free memory
        sync()
        rec["runs_s"].append(round(time.monotonic() - start, 2))
        if HAVE_CUDA:
            rec["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            rec["added_mib"] = round((torch.cuda.max_memory_allocated() - before) / 2**20)
        del out
        if i == 0 and rec["runs_s"][0] > 60:
            break
    best = min(rec["runs_s"])
    rec["tflops"] = round(2 * X4PLUS_MACS * s.big_side**2 / best / 1e12, 1)
    rec["share_of_h200_fp16_peak"] = round(rec["tflops"] / H200_FP16_DENSE_TFLOPS, 4)
    rec["summary"] = (f"{s.big_side}² x4plus fp16: {best:.2f} s (first {rec['runs_s'][0]:.2f}), "
                      f"peak {rec.get('peak_allocated_mib', '?')} MiB")
    return rec


def step_default_model(s: Sizes) -> dict[str, Any]:
    import torch

    import esrgan_cli

    try:
        up = esrgan_cli.load_model(None, device=device(), precision="fp16")
        which = "load_model(None)"
    except Exception:  # noqa: BLE001 - the bundled default did not resolve: the same file by path
        up = esrgan_cli.load_model(ROOT / BUNDLED_DEFAULT, device=device(), precision="fp16")
        which = BUNDLED_DEFAULT
    img = test_picture(s.compact_side)
    for _ in range(2):
        up.upscale(img, tile=0)
    sync()
    n, start = 0, time.monotonic()
    while time.monotonic() - start < s.compact_seconds or n < 2:
        up.upscale(img, tile=0)
        n += 1
    sync()
    e2e = n / (time.monotonic() - start)
    # The network alone (no host conversion, no edge padding): one 1×3×S×S fp16 channels-last batch at a time.
    model = getattr(up, UPSCALER_MODEL)
    dtype = next(model.parameters()).dtype
    x = torch.rand(1, 3, s.compact_side, s.compact_side, device=device(), dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        sync()
        m, start = 0, time.monotonic()
        while time.monotonic() - start < s.compact_seconds / 2 or m < 2:
            model(x)
            m += 1
        sync()
    net = m / (time.monotonic() - start)
    tflops = 2 * COMPACT_MACS * s.compact_side**2 * net / 1e12
    return {"model": which, "side": s.compact_side, "images_per_s_end_to_end": round(e2e, 2),
            "images_per_s_network_only": round(net, 2), "network_tflops": round(tflops, 2),
            "summary": f"{e2e:.1f} images/s end to end, {net:.1f} network only ({s.compact_side}² input)"}


def step_bf16(s: Sizes) -> dict[str, Any]:
    import esrgan_cli

    img = test_picture(int(s.bench_sizes.split(",")[0]))
    rec: dict[str, Any] = {"side": img.shape[0]}
    outs = {}
    for precision in ("fp16", "bf16"):
        up = esrgan_cli.load_model(x4plus_path(), device=device(), precision=precision)
        up.upscale(img, tile=0)
        sync()
        start = time.monotonic()
        outs[precision] = up.upscale(img, tile=0)
        sync()
        rec[f"{precision}_s"] = round(time.monotonic() - start, 3)
        del up
        _free_gpu()
    rec["bf16_vs_fp16_db"] = round(psnr(outs["bf16"], outs["fp16"]), 2)
    rec["summary"] = f"fp16 {rec['fp16_s']} s, bf16 {rec['bf16_s']} s"
    return rec


def step_cuda_graphs(s: Sizes) -> dict[str, Any]:
    """The compact network at a fixed shape: eager against a captured CUDA graph (launch overhead)."""
    import torch

    import esrgan_cli

    up = esrgan_cli.load_model(ROOT / BUNDLED_DEFAULT, device="cuda", precision="fp16")
    model = getattr(up, UPSCALER_MODEL)
    rec: dict[str, Any] = {}
    for side in (256, s.compact_side):
        x = torch.rand(1, 3, side, side, device="cuda", dtype=torch.float16).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = model(x)
            eager, replay = _time_cuda(lambda x=x: model(x)), _time_cuda(graph.replay)
            err = float((model(x) - y).abs().max())
        rec[str(side)] = {"eager_ms": round(eager * 1e3, 3), "graph_ms": round(replay * 1e3, 3),
                          "max_abs_diff": err}
        del graph, y
    rec["summary"] = ", ".join(f"{k}²: eager {v['eager_ms']} ms, graph {v['graph_ms']} ms"
                               for k, v in rec.items() if isinstance(v, dict))
    return rec


def _time_cuda(fn: Callable[[], Any], reps: int = 20) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    start = time.monotonic()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.monotonic() - start) / reps


def variant_compile(side: int) -> dict[str, Any]:
    """In its own process (killed at the part's deadline): torch.compile of the compact network's forward."""
    import torch

    import esrgan_cli

    up = esrgan_cli.load_model(ROOT / BUNDLED_DEFAULT, device=device(), precision="fp16")
    model = getattr(up, UPSCALER_MODEL)
    dtype = next(model.parameters()).dtype
    x = torch.rand(1, 3, side, side, device=device(), dtype=dtype).contiguous(memory_format=torch.channels_last)
    timer = _time_cuda if HAVE_CUDA else _time_cpu
    with torch.inference_mode():
        eager_out = model(x)
        eager = timer(lambda: model(x))
        compiled = torch.compile(model)
        start = time.monotonic()
        out = compiled(x)
        sync()
        compile_s = time.monotonic() - start
        fast = timer(lambda: compiled(x))
        err = float((out.float() - eager_out.float()).abs().max())
    return {"side": side, "eager_ms": round(eager * 1e3, 3), "compiled_ms": round(fast * 1e3, 3),
            "compile_s": round(compile_s, 1), "max_abs_diff": err,
            "summary": f"eager {eager * 1e3:.2f} ms, compiled {fast * 1e3:.2f} ms after {compile_s:.0f} s"}


def _time_cpu(fn: Callable[[], Any], reps: int = 3) -> float:
    fn()
    start = time.monotonic()
    for _ in range(reps):
        fn()
    return (time.monotonic() - start) / reps


def step_compile(s: Sizes, until: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", "compile", "--side", str(s.compact_side)]
    rc, text = run_cmd(cmd, until - time.monotonic())
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        raise RuntimeError(f"exit {rc} ({'timed out' if rc is None else 'failed'}): {text[-800:]}")
    return json.loads(lines[-1])


# ---- part 3: training -------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    rc: int | None
    interrupted: bool
    entries: list[dict[str, Any]]  # log.jsonl lines, each with "t": seconds since the process started
    output: str
    seconds: float

    def rate(self, warm: int) -> float | None:
        """Iterations per second between the first logged step at or past `warm` and the last one."""
        steps = [e for e in self.entries if "loss" in e and e["iter"] >= warm]
        if len(steps) < 2 or steps[-1]["t"] <= steps[0]["t"]:
            return None
        return (steps[-1]["iter"] - steps[0]["iter"]) / (steps[-1]["t"] - steps[0]["t"])

    def startup(self, warm: int) -> float | None:
        """Seconds before the first iteration ran (imports, CUDA, data, networks, workers)."""
        r = self.rate(warm)
        first = next((e for e in self.entries if "loss" in e), None)
        return None if r is None or first is None else max(0.0, first["t"] - first["iter"] / r)

    def last_iter(self) -> int:
        return max((e["iter"] for e in self.entries if "loss" in e), default=0)


def train(argv: list[str], run_dir: Path, stop_at: float, grace: float = 60.0) -> TrainResult:
    """`esrgan train ARGV --out RUN_DIR -q` in its own process, timing each log line as it appears; at `stop_at`
    (monotonic) it gets SIGINT (stop after this iteration, save the state), and SIGKILL `grace` seconds later."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "esrgan_cli", "train", *argv, "--out", str(run_dir), "-q"]
    log_file = run_dir.parent / f"{run_dir.name}.out"
    start = time.monotonic()
    entries: list[dict[str, Any]] = []
    interrupted, killed_at = False, math.inf
    buffer = ""
    pos = 0
    with open(log_file, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        while True:
            rc = proc.poll()
            path = run_dir / "log.jsonl"
            if path.exists():
                with open(path, encoding="utf-8") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
                buffer += chunk
                *complete, buffer = buffer.split("\n")
                t = time.monotonic() - start
                for line in complete:
                    if line.strip():
                        entries.append({**json.loads(line), "t": round(t, 3)})
            if rc is not None:
                break
            now = time.monotonic()
            if now >= stop_at and not interrupted:
                proc.send_signal(signal.SIGINT)
                interrupted, killed_at = True, now + grace
            elif now >= killed_at:
                proc.kill()
            time.sleep(0.05)
    return TrainResult(rc, interrupted, entries, log_file.read_text(errors="replace")[-3000:],
                       time.monotonic() - start)


def train_args(s: Sizes, stage: str, arch: str, precision: str, iters: int, *, init: Path, seed: int,
               save_every: int | None = None, log_every: int | None = None,
               gan: dict[str, Any] | None = None) -> list[str]:
    """The command line of one stage: real-world degradation, batch and patch from `s`; the PSNR stage of the compact
    architecture distils from x4plus (target 0.5 teacher + 0.5 HR) with the levels term."""
    a = ["--stage", stage, "--data", str(shared() / "trainsets"), "--init", str(init), "--degradation", "real",
         "--iters", str(iters), "--batch-size", str(s.batch), "--patch-size", str(s.patch), "--device", device(),
         "--precision", precision, "--workers", str(s.workers), "--seed", str(seed),
         "--log-every", str(log_every or s.log_every), "--save-every", str(save_every or iters),
         "--val-every", str(iters)]
    if arch == "compact" and stage == "psnr":
        a += ["--teacher", str(x4plus_path()), "--teacher-weight", "0.5", "--levels-weight", "1"]
    if stage == "gan":
        g = gan or {}
        a += ["--discriminator", "unet", "--perceptual-loss", "l1", "--perceptual-weights",
              str(shared() / "vgg" / VGG_FILE), "--perceptual-layer", "conv3_4",
              "--pixel-weight", str(g.get("pixel", 1.0)),
              "--perceptual-weight", str(g.get("perceptual", 1.0 / CAFFE_SCALE)),
              "--gan-weight", str(g.get("gan", 0.1))]
        if arch == "compact":
            a += ["--levels-weight", "1"]
        if g.get("milestones"):
            a += ["--milestones", g["milestones"]]
        if g.get("teacher_weight"):
            a += ["--teacher", str(x4plus_path()), "--teacher-weight", str(g["teacher_weight"])]
    return a


def step_measure(s: Sizes, work: Path, name: str, stage: str, arch: str, precision: str,
                 until: float) -> dict[str, Any]:
    init = ROOT / BUNDLED_PSNR if arch == "compact" else x4plus_path()
    iters = s.measure_iters if arch == "compact" else max(s.measure_warm + 3 * s.log_every,
                                                           s.measure_iters * 2 // 3)
    run_dir = work / "measure" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    res = train(train_args(s, stage, arch, precision, iters, init=init, seed=30), run_dir, until, grace=20)
    rate = res.rate(s.measure_warm)
    rec: dict[str, Any] = {"stage": stage, "arch": arch, "precision": precision, "batch": s.batch, "patch": s.patch,
                           "iters": iters, "exit": res.rc, "interrupted": res.interrupted,
                           "wall_s": round(res.seconds, 1), "last_iter": res.last_iter(),
                           "it_per_s": round(rate, 3) if rate else None,
                           "startup_s": round(res.startup(s.measure_warm) or 0, 1),
                           "hr_megapixels_per_s": round(rate * s.batch * s.patch**2 / 1e6, 2) if rate else None,
                           "losses_last": {k: v for k, v in (res.entries[-1] if res.entries else {}).items()
                                           if k not in ("t",)}}
    if res.rc != 0 or rate is None:
        rec["output_tail"] = res.output[-2000:]
        if rate is None:
            raise RuntimeError(f"no rate (exit {res.rc}): {res.output[-800:]}")
    rec["summary"] = f"{rate:.2f} it/s, startup {rec['startup_s']} s"
    shutil.rmtree(run_dir, ignore_errors=True)  # state.pt of x4plus with Adam moments: hundreds of MB
    return rec


def ema_from_state(run_dir: Path, dest: Path) -> int:
    """The EMA weights of an interrupted run's state.pt as a safetensors model; returns its iteration."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    meta = {"esrgan.arch": "RRDBNet", "esrgan.config": json.dumps(config["model"], sort_keys=True),
            "esrgan.stage": config["stage"], "esrgan.iteration": str(state["iteration"]),
            "esrgan.note": "EMA weights taken from state.pt after an interrupted run"}
    save_file({k: v.contiguous() for k, v in state["ema"].items()}, str(dest), metadata=meta)
    return int(state["iteration"])


def to_fp16(src: Path, dest: Path, note: str) -> int:
    """A model file as fp16 with its metadata kept (`esrgan convert --dtype fp16` does the same, in a process)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k).to(torch.float16).contiguous() for k in f.keys()}  # noqa: SIM118
    meta["esrgan.gpu_check"] = note
    save_file(tensors, str(dest), metadata=meta)
    return dest.stat().st_size


def last_model(run_dir: Path) -> tuple[Path, int] | None:
    found = sorted((int(p.stem.split("_")[1]), p) for p in run_dir.glob("model_*.safetensors"))
    return (found[-1][1], found[-1][0]) if found else None


def append_train_log(out: Path, stage: str, res: TrainResult) -> None:
    with open(out / "train-log.jsonl", "a", encoding="utf-8") as f:
        for e in res.entries:
            f.write(json.dumps(_plain({"stage": stage, **e})) + "\n")


def plan_iters(seconds: float, rate: float, startup: float) -> int:
    return max(1, int((seconds - startup) * rate * 0.93))


def step_train_stage(run: Run, work: Path, stage: str, precision: str, seconds: float, rate: float, startup: float,
                     init: Path, ckpts: int, gan: dict[str, Any] | None = None) -> dict[str, Any]:
    s = run.sizes
    iters = plan_iters(seconds, rate, startup)
    save_every = max(1, math.ceil(iters / ckpts))
    gan = dict(gan or {})
    if stage == "gan" and "milestones" not in gan:
        gan["milestones"] = str(max(1, int(iters * 0.75)))  # one halving, late: a short run needs the full rate
    run_dir = work / "train" / stage
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = train_args(s, stage, "compact", precision, iters, init=init, seed=25 if stage == "psnr" else 26,
                      save_every=save_every, log_every=max(s.log_every, 25 if not run.tiny else s.log_every), gan=gan)
    stop_at = time.monotonic() + seconds + 15
    run.log(f"   {stage}: {iters} iterations planned ({rate:.2f} it/s, {seconds:.0f} s), save every {save_every}")
    res = train(argv, run_dir, min(stop_at, run.deadline - 10), grace=10)
    append_train_log(run.out, stage, res)
    rec: dict[str, Any] = {"planned_iters": iters, "precision": precision, "exit": res.rc,
                           "interrupted": res.interrupted, "wall_s": round(res.seconds, 1),
                           "it_per_s": round(res.rate(s.measure_warm) or 0, 3), "argv": argv,
                           "last_log": res.entries[-1] if res.entries else None}
    if res.rc not in (0, None) and not res.interrupted:
        rec["output_tail"] = res.output[-2000:]
    models = sorted((int(p.stem.split("_")[1]), p) for p in run_dir.glob("model_*.safetensors"))
    if res.interrupted and (run_dir / "state.pt").exists():
        dest = run_dir / "model_interrupted.safetensors"
        it = ema_from_state(run_dir, dest)
        if not models or models[-1][0] < it:
            if models and it - models[-1][0] < save_every / 2:
                models.pop()  # the last save is only a few iterations older: keep the later one instead
            models.append((it, dest))
    if not models:
        raise RuntimeError(f"no model written (exit {res.rc}): {res.output[-800:]}")
    rec["models"] = {it: str(p) for it, p in models}
    rec["final_model"] = str(models[-1][1])
    rec["final_iter"] = models[-1][0]
    rec["summary"] = f"{models[-1][0]} iterations in {res.seconds:.0f} s, checkpoints {[m[0] for m in models]}"
    return rec


def copy_checkpoints(run: Run, stage: str, rec: dict[str, Any], keep: int) -> list[str]:
    models = sorted((int(k), Path(v)) for k, v in rec["models"].items())[-keep:]
    names = []
    for it, path in models:
        name = f"compact-real-{stage}-it{it}.fp16.safetensors"
        to_fp16(path, run.out / name, f"issue 30 GPU run, {stage} stage, iteration {it}")
        names.append(name)
    return names


# ---- the run ------------------------------------------------------------------------------------------------------

def part1(run: Run, work: Path, tests: list[str]) -> None:
    s = run.sizes
    until = time.monotonic() + s.part1_s
    proc, log = start_pytest(work, tests)  # beside the checks below: they do not time anything
    run.step("1a_fp16_vs_fp32_set14", lambda: step_fp16_vs_fp32(s), until=until, need=5)
    run.step("1b_cpu_vs_cuda_fp32", lambda: step_cpu_vs_cuda(s), until=until, need=5, cuda=True)
    run.step("1c_fp16_overflow_fallback", lambda: step_overflow(s), until=until, need=5)
    run.step("1d_cuda_oom_halving", lambda: step_oom(s), until=until, need=5)
    run.step("1e_pytest_cuda", lambda: finish_pytest(proc, log, max(until, time.monotonic() + 5)), until=math.inf)


def part2(run: Run, work: Path) -> None:
    s = run.sizes
    until = time.monotonic() + s.part2_s
    run.step("2a_bench_upscale", lambda: step_bench(s, work, until - 28), until=until, need=30)
    run.step("2b_big_input", lambda: step_big(s), until=until, need=15)
    run.step("2c_default_model_throughput", lambda: step_default_model(s), until=until, need=8)
    run.step("2d_variant_bf16", lambda: step_bf16(s), until=until, need=8, cuda=True)
    run.step("2e_variant_cuda_graphs", lambda: step_cuda_graphs(s), until=until, need=6, cuda=True)
    if HAVE_CUDA or run.tiny_compile:
        run.step("2f_variant_compile", lambda: step_compile(s, until), until=until, need=20 if HAVE_CUDA else 5)


def part3(run: Run, work: Path, gan_opts: dict[str, Any]) -> None:
    s = run.sizes
    end = run.deadline - s.margin_s
    low = "bf16" if HAVE_CUDA else "fp32"
    measure_slot = 45.0 if HAVE_CUDA else 120.0

    def measure(name: str, stage: str, arch: str, precision: str) -> dict[str, Any]:
        return run.step(f"3_rate_{name}", lambda: step_measure(s, work, name, stage, arch, precision,
                                                               min(time.monotonic() + measure_slot, end)),
                        until=end, need=20 if HAVE_CUDA else 10)

    psnr_rates = {}
    for precision in dict.fromkeys([low, "fp32"]):
        r = measure(f"compact_psnr_{precision}", "psnr", "compact", precision)
        if r["status"] == "ok":
            psnr_rates[precision] = (r["it_per_s"], r["startup_s"])
    gan_rates = {}
    r = measure(f"compact_gan_{low}", "gan", "compact", low)
    if r["status"] == "ok":
        gan_rates[low] = (r["it_per_s"], r["startup_s"])
    else:
        r = measure("compact_gan_fp32", "gan", "compact", "fp32")
        if r["status"] == "ok":
            gan_rates["fp32"] = (r["it_per_s"], r["startup_s"])
    # x4plus's rates only while the real run keeps at least `keep` seconds.
    keep = 170.0 if HAVE_CUDA else 40.0
    for stage in ("psnr", "gan"):
        if end - time.monotonic() - keep > 20:
            measure(f"x4plus_{stage}_{low}", stage, "x4plus", low)
        else:
            run.put(f"3_rate_x4plus_{stage}_{low}", {"status": "skipped", "reason": "time kept for the training run"})
    if not psnr_rates or not gan_rates:
        run.put("3_train", {"status": "skipped", "reason": "no stage rate was measured"})
        return
    p_prec = max(psnr_rates, key=lambda k: psnr_rates[k][0])
    g_prec = max(gan_rates, key=lambda k: gan_rates[k][0])
    left = end - time.monotonic()
    psnr_s = 0.4 * left
    rec_p = run.step("3_train_psnr", lambda: step_train_stage(
        run, work, "psnr", p_prec, psnr_s, *psnr_rates[p_prec], ROOT / BUNDLED_PSNR, 1), until=end, need=20)
    if rec_p["status"] != "ok":
        return
    rec_p["checkpoints_out"] = copy_checkpoints(run, "psnr", rec_p, 1)
    run.put("3_train_psnr", rec_p)
    gan_s = end - time.monotonic()
    rec_g = run.step("3_train_gan", lambda: step_train_stage(
        run, work, "gan", g_prec, gan_s, *gan_rates[g_prec], Path(rec_p["final_model"]), 3, gan_opts),
        until=end, need=20)
    if rec_g["status"] == "ok":
        rec_g["checkpoints_out"] = copy_checkpoints(run, "gan", rec_g, 3)
        run.put("3_train_gan", rec_g)


def summary(run: Run) -> str:
    lines = ["", "| step | status | s | result |", "|---|---|---|---|"]
    for name, rec in run.data["steps"].items():
        detail = rec.get("summary") or rec.get("reason") or rec.get("error", "")
        flag = {True: " PASS", False: " FAIL"}.get(rec.get("pass"), "")
        lines.append(f"| {name} | {rec['status']}{flag} | {rec.get('seconds', '')} | {str(detail)[:110]} |")
    return "\n".join(lines)


def prepare(src: Path, dest: Path, max_mib: float) -> None:
    """The .gpu/ folder: the files the GPU run needs from ../shared, in shared/'s layout, within `max_mib` together
    with the repository's working tree. Training images are stored as lossless WebP (the same pixels, 70 % of PNG's
    bytes); T91 images smaller than a 128-pixel patch and the first 20 BSD200 images (held out) are left out."""
    from PIL import Image

    out = dest / "shared"
    if out.exists():
        shutil.rmtree(out)
    for rel in (f"weights/{X4PLUS_FILE}", f"vgg/{VGG_FILE}"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out / rel)
    lr = out / "testsets/Set14/LR_bicubic/X4"
    lr.mkdir(parents=True)
    for f in sorted((src / "testsets/Set14/LR_bicubic/X4").glob("*.png")):
        shutil.copyfile(f, lr / f.name)
    git = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum((ROOT / p).stat().st_size for p in git if p and (ROOT / p).is_file())

    def total() -> int:
        return tree + sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())

    def add(path: Path, folder: Path) -> bool:
        img = Image.open(path).convert("RGB")
        if min(img.size) < 128:
            return True
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (path.stem + ".webp")
        img.save(target, "WEBP", lossless=True, quality=100, method=6)
        if total() > max_mib * 2**20:
            target.unlink()
            return False
        return True

    count = {"T91": 0, "BSD200": 0}
    for f in sorted((src / "trainsets/T91").glob("*.bmp")):
        if not add(f, out / "trainsets/T91"):
            break
        count["T91"] += 1
    for f in sorted((src / "trainsets/BSD200").glob("*.png"))[HELD_OUT:]:
        if not add(f, out / "trainsets/BSD200"):
            break
        count["BSD200"] += 1
    (out / "README.txt").write_text(
        "Copied from ../shared for the GPU run (benchmarks/gpu_check.py --prepare): x4plus, the VGG19 file,\n"
        f"Set14 LR X4; training images as lossless WebP: T91 ({count['T91']} tried, those under 128 px left out),\n"
        f"BSD200 from the {HELD_OUT + 1}st by name ({count['BSD200']}); the first {HELD_OUT} BSD200 images are held\n"
        "out and not here.\n", encoding="utf-8")
    print(f"{dest}: {count} training images; working tree {tree / 2**20:.2f} MiB + .gpu "
          f"{(total() - tree) / 2**20:.2f} MiB = {total() / 2**20:.2f} MiB")


def main() -> None:
    global HAVE_CUDA
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    ap.add_argument("--work", type=Path, help="work files (runs, bench output); default: a temporary folder")
    ap.add_argument("--budget", type=float, default=520.0, help="seconds for everything (the run's timeout minus 20)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes and iterations (the CPU smoke run)")
    ap.add_argument("--tiny-compile", action="store_true", help="with --tiny: try torch.compile on the CPU too")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--part1-s", type=float, help="seconds for part 1 (default 85; the CUDA tests run beside it)")
    ap.add_argument("--part2-s", type=float, help="seconds for part 2 (default 110); part 3 gets the rest")
    ap.add_argument("--tests", help="test files for part 1, comma-separated (default: tests/test_cuda.py, and "
                    "tests/test_engine.py and tests/test_api.py on CUDA)")
    ap.add_argument("--gan-perceptual", type=float, default=1.0 / CAFFE_SCALE,
                    help="GAN stage perceptual weight (caffe-bgr units; 1/57.6 is Real-ESRGAN's 1 for conv3_4)")
    ap.add_argument("--gan-weight", type=float, default=0.1)
    ap.add_argument("--gan-pixel", type=float, default=1.0)
    ap.add_argument("--gan-teacher-weight", type=float, default=0.0, help="0: the GAN stage's target is the HR image")
    ap.add_argument("--prepare", action="store_true", help="build .gpu/ from --shared and exit")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--max-mib", type=float, default=59.5)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--side", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:
        prepare(args.shared, ROOT / ".gpu", args.max_mib)
        return
    if "ESRGAN_SHARED" not in os.environ:
        carried = ROOT / ".gpu" / "shared"
        os.environ["ESRGAN_SHARED"] = str(carried if carried.is_dir() else ROOT.parent / "shared")
    import torch

    HAVE_CUDA = torch.cuda.is_available()
    if args.variant == "compile":
        print(json.dumps(_plain(variant_compile(args.side))))
        return
    sizes = TINY if args.tiny else FULL
    if args.part1_s is not None:
        sizes = replace(sizes, part1_s=args.part1_s)
    if args.part2_s is not None:
        sizes = replace(sizes, part2_s=args.part2_s)
    tests = args.tests or ("tests/test_cuda.py,tests/test_engine.py,tests/test_api.py" if HAVE_CUDA
                           else "tests/test_cuda.py")
    run = Run(args.out, args.budget, sizes, args.tiny)
    run.tiny_compile = args.tiny_compile
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    run.data["meta"].update(work=str(work), root=str(ROOT), command=sys.argv)
    run.log(f"gpu_check: budget {args.budget:.0f} s, tiny={args.tiny}, CUDA={HAVE_CUDA}, out={args.out}, work={work}")
    env = run.step("0_environment", step_environment, until=math.inf)
    if env.get("bundled_resolve") is False:
        run.put("0_install", {"status": "ok", "result": try_install()})
    parts = set(args.parts.split(","))
    gan_opts = {"perceptual": args.gan_perceptual, "gan": args.gan_weight, "pixel": args.gan_pixel,
                "teacher_weight": args.gan_teacher_weight}
    if "1" in parts:
        part1(run, work, tests.split(","))
    if "2" in parts:
        part2(run, work)
    if "3" in parts:
        part3(run, work, gan_opts)
    run.data["meta"]["finished"] = True
    run.write()
    table = summary(run)
    run.log(table)
    files = sorted(p.name for p in run.out.iterdir())
    run.log(f"OUT: {files} ({sum(p.stat().st_size for p in run.out.iterdir()) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
