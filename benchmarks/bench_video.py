"""Video throughput: a 320×180 clip (moving test pattern, sine audio) upscaled to 1280×720 by `upscale_video`.

Reports frames per second end to end, the share of wall time spent in the model (the rest is decoding, colour
conversion, encoding and muxing, most of it overlapped with the model on threads), and the peak RSS, as JSON.

    python benchmarks/bench_video.py --frames 48 --model compact-real-x4 --json video.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import esrgan_cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from video_clips import make_clip  # noqa: E402  (the tests' clip maker: one way to make clips)


def peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--model", default=None, help="registry name or file (default: the bundled default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--codec", default="h264")
    parser.add_argument("--suffix", default=".mp4")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    upscaler = esrgan_cli.load_model(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as folder:
        src = make_clip(Path(folder) / "clip.mp4", frames=args.frames, width=args.width, height=args.height)
        dst = Path(folder) / f"clip_x4{args.suffix}"
        start = time.perf_counter()
        result = esrgan_cli.upscale_video(src, dst, upscaler, encoding=esrgan_cli.VideoEncoding(codec=args.codec))
        wall = time.perf_counter() - start
        size = dst.stat().st_size
    report = {
        "frames": result.frames, "input": f"{args.width}x{args.height}", "output": f"{result.width}x{result.height}",
        "model": args.model or "default", "device": upscaler.placement.device.type,
        "dtype": str(upscaler.placement.dtype).removeprefix("torch."), "torch_threads": torch.get_num_threads(),
        "codec": result.codec, "pix_fmt": result.pix_fmt, "seconds": round(wall, 2),
        "fps": round(result.frames / wall, 3), "model_seconds": round(result.model_seconds, 2),
        "model_share": round(result.model_seconds / wall, 3), "output_bytes": size, "peak_rss_mb": peak_rss_mb(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
