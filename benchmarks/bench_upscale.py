"""Speed, efficiency, memory and fidelity of esrgan's engine beside a RealESRGANer-style baseline, same run.

For each input size and tile it runs, each in a fresh process (so memory figures are the run's own):
  esrgan    the library path `esrgan upscale` uses: staged tiles, channels-last, conversion on the device;
  baseline  what Real-ESRGAN's `RealESRGANer.enhance` does: NCHW, one tile at a time at batch 1, synchronous copies,
            crop-and-paste with --tile-pad (10) pixels of context, half precision when fp16 is asked for.
Both go from an 8-bit RGB array in memory to an 8-bit array (no file I/O). Reported, best of --repeats:
  wall s        whole run;   passes / s per pass: forward passes over the image (trunk passes for esrgan)
  GFLOP/s       useful work: the model's multiply-adds per input pixel × 2 × input pixels / wall (overlap is paid for)
  % of peak     that figure over a large matrix multiply measured in this run on the same device
  peak MB       peak RSS of the process on CPU (max allocated on CUDA), and how much the run added to it
  dB            PSNR of the 8-bit output against esrgan's untiled fp32 output of the same input

    python benchmarks/bench_upscale.py                                   # CPU: 23-block x4, 128², untiled and tile 64
    python benchmarks/bench_upscale.py --device cuda --precision fp16 --sizes 1024 --tiles 0,512
    python benchmarks/bench_upscale.py --sizes 256,512,1024,2048 --tiles auto --modes esrgan --repeats 1 \\
        --model ../shared/weights/realesrgan-x4plus-anime-6b.fp16.safetensors  # memory against size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(os.environ.get("ESRGAN_SHARED", "../shared"))
DEFAULT_MODEL = SHARED / "weights/realesrgan-x4plus.fp16.safetensors"
DEFAULT_IMAGE = SHARED / "testsets/Set14/HR/barbara.png"


def test_image(path: Path, size: int) -> np.ndarray:
    """A size×size crop from the centre of `path`, enlarged first when the image is smaller (random without it)."""
    from PIL import Image

    if not path.is_file():
        return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    img = Image.open(path).convert("RGB")
    factor = size / min(img.size)
    if factor > 1:
        img = img.resize((math.ceil(img.width * factor), math.ceil(img.height * factor)), Image.Resampling.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def matmul_peak(device: str, dtype_name: str) -> float:
    """GFLOP/s of a large square matrix multiply, best of several (fp32 on CPU, the run's precision on CUDA)."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(5 if device == "cpu" else 20):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def baseline_upscale(model: Any, rgb: np.ndarray, scale: int, tile: int, tile_pad: int, device: str,
                     half: bool) -> tuple[np.ndarray, int]:
    """RealESRGANer.enhance's steps for an 8-bit RGB image at outscale = scale (pre_pad 0), as its code does them."""
    import torch

    bgr = rgb[:, :, ::-1]  # RealESRGANer takes OpenCV's BGR and converts it back to RGB
    img = bgr.astype(np.float32) / 255.0
    img = np.ascontiguousarray(img[:, :, ::-1])
    x = torch.from_numpy(np.transpose(img, (2, 0, 1))).float().unsqueeze(0).to(device)
    if half:
        x = x.half()
    passes = 0
    with torch.no_grad():
        if tile <= 0:
            out = model(x)
            passes = 1
        else:
            _, c, h, w = x.shape
            out = x.new_zeros((1, c, h * scale, w * scale))
            for ty in range(math.ceil(h / tile)):
                for tx in range(math.ceil(w / tile)):
                    y0, x0 = ty * tile, tx * tile
                    y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                    py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
                    py1, px1 = min(y1 + tile_pad, h), min(x1 + tile_pad, w)
                    piece = model(x[:, :, py0:py1, px0:px1])
                    passes += 1
                    oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                    out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                        piece[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    result = out.data.squeeze().float().cpu().clamp_(0, 1).numpy()
    result = np.transpose(result[[2, 1, 0], :, :], (1, 2, 0))  # to BGR, as RealESRGANer returns it
    return (result[:, :, ::-1] * 255.0).round().astype(np.uint8), passes


def basicsr_forward(net: Any) -> Any:
    """`net` computed with the operations of BasicSR's rrdbnet_arch (multiply then add for the residual scaling),
    so the baseline does not inherit esrgan's own changes to the model code."""
    import torch
    from torch.nn import functional as F

    def lrelu(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.2, inplace=True)

    def rdb(block: Any, x: torch.Tensor) -> torch.Tensor:
        x1 = lrelu(block.conv1(x))
        x2 = lrelu(block.conv2(torch.cat((x, x1), 1)))
        x3 = lrelu(block.conv3(torch.cat((x, x1, x2), 1)))
        x4 = lrelu(block.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = block.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x

    def forward(x: torch.Tensor) -> torch.Tensor:
        if net.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, net.config.unshuffle)
        feat = net.conv_first(x)
        body = feat
        for rrdb in net.body:
            body = rdb(rrdb.rdb3, rdb(rrdb.rdb2, rdb(rrdb.rdb1, body))) * 0.2 + body
        feat = feat + net.conv_body(body)
        for i in range(1, net.config.upsample_stages + 1):
            feat = lrelu(getattr(net, f"conv_up{i}")(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return net.conv_last(lrelu(net.conv_hr(feat)))

    return forward


def _rss() -> tuple[float, float]:
    """(current, peak since the last reset) resident memory in MB, from /proc (Linux)."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # Linux ≥ 4.0: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """One (mode, size, tile) configuration, best of cfg['repeats']; runs in its own process."""
    import torch

    import esrgan_cli
    from esrgan_cli.model.weights import build_model, load_weights
    from esrgan_cli.upscale.device import choose_placement

    weights = load_weights(Path(cfg["model"]))
    placement = choose_placement(cfg["device"], cfg["precision"])
    device = str(placement.device)
    rgb = test_image(Path(cfg["image"]), cfg["size"])
    tile = None if cfg["tile"] == "auto" else int(cfg["tile"])
    scale = weights.config.scale
    if cfg["mode"] == "esrgan":
        up = esrgan_cli.load_model(weights, device, cfg["precision"])

        def run() -> tuple[np.ndarray, int]:
            canvas = np.empty((rgb.shape[0] * scale, rgb.shape[1] * scale, 3), np.uint8)
            passes = up.upscale_into(rgb.astype(np.float32) / 255.0, canvas, tile, cfg["overlap"])
            return canvas, passes
    else:
        half = placement.dtype == torch.float16
        net = build_model(weights).to(placement.device).eval()
        model = basicsr_forward(net.half() if half else net)

        def run() -> tuple[np.ndarray, int]:
            return baseline_upscale(model, rgb, scale, tile or 0, cfg["tile_pad"], device, half)

    # Memory: the peak over all repeats, less what the process held before the first (model, libraries).
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        _reset_peak_rss()
        before = _rss()[0]
    best, out, passes = math.inf, None, 0
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        out, passes = run()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _rss()[1]
    added_mb = peak_mb - before
    assert out is not None
    np.save(cfg["out_file"], out)
    macs = weights.config.macs_per_input_pixel()
    return {
        "mode": cfg["mode"], "size": cfg["size"], "tile": cfg["tile"],
        "context": cfg["overlap"] if cfg["mode"] == "esrgan" else cfg["tile_pad"],
        "precision": str(placement.dtype).removeprefix("torch."), "device": device,
        "wall_s": best, "passes": passes, "s_per_pass": best / passes,
        "gflops": 2 * macs * cfg["size"] ** 2 / best / 1e9, "peak_mb": peak_mb, "added_mb": added_mb,
        "output_mb": out.nbytes / 2**20,
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    from esrgan_cli.defaults import DEFAULT_OVERLAP

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="cropped (enlarged if needed) to each size")
    ap.add_argument("--sizes", default="128", help="input sides, comma-separated")
    ap.add_argument("--tiles", default="0,64", help="comma-separated; 0 = untiled, auto = from the memory budget")
    ap.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="esrgan's tile context")
    ap.add_argument("--tile-pad", type=int, default=10, help="the baseline's tile context (RealESRGANer's default)")
    ap.add_argument("--modes", default="esrgan,baseline")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print its JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    import tempfile

    import torch

    from esrgan_cli.upscale.device import choose_placement

    placement = choose_placement(args.device, args.precision)
    device = str(placement.device)
    dtype_name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[placement.dtype]
    peak = matmul_peak(device, "fp32" if device == "cpu" else dtype_name)
    info = {
        "device": torch.cuda.get_device_name(placement.device) if device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "model": str(args.model),
        "image": str(args.image), "matmul_gflops": peak,
    }
    print(f"# {info['device']}, {info['threads']} threads, torch {info['torch']}; matrix-multiply peak "
          f"{peak:.0f} GFLOP/s; model {args.model.name}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            reference: np.ndarray | None = None
            for tile in args.tiles.split(","):
                for mode in args.modes.split(","):
                    out_file = Path(tmp) / f"{mode}-{size}-{tile}.npy"
                    cfg = {"mode": mode, "size": size, "tile": tile, "overlap": args.overlap,
                           "tile_pad": args.tile_pad, "model": str(args.model), "image": str(args.image),
                           "device": args.device, "precision": args.precision, "repeats": args.repeats,
                           "out_file": str(out_file)}
                    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"{mode} {size} tile {tile}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    out = np.load(out_file)
                    if reference is None and mode == "esrgan" and tile == "0" and row["precision"] == "float32":
                        reference = out
                    row["psnr_db"] = psnr(out, reference) if reference is not None else None
                    row["peak_share"] = row["gflops"] / peak
                    rows.append(row)
                    print(_line(row), file=sys.stderr)
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n", encoding="utf-8")


def _line(r: dict[str, Any]) -> str:
    return f"{r['mode']} {r['size']}² tile {r['tile']}: {r['wall_s']:.2f} s, {r['gflops']:.0f} GFLOP/s"


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | input | tile | context | precision | wall s | passes | s/pass | GFLOP/s | % of peak "
            "| peak MB | added MB | dB vs untiled |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        db = "—" if r["psnr_db"] is None else ("exact" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f}")
        lines.append(
            f"| {r['mode']} | {r['size']}² | {r['tile']} | {r['context']} | {r['precision']} | {r['wall_s']:.2f} "
            f"| {r['passes']} | {r['s_per_pass']:.2f} | {r['gflops']:.0f} | {100 * r['peak_share']:.0f} % "
            f"| {r['peak_mb']:.0f} | {r['added_mb']:.0f} | {db} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
