"""End-to-end time of `esrgan upscale` as a user runs it: a fresh process, imports, model load, file in, file out.

    python benchmarks/bench_cli.py                         # the default model on a 256×256 input, best of 3
    python benchmarks/bench_cli.py --size 512 --model compact-psnr-x4 -- --tile 128

The input is a centre crop of Set14 barbara from ESRGAN_SHARED (random pixels without it). Arguments after `--` go to
`esrgan upscale`. Prints one line per run and the best.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_upscale import DEFAULT_IMAGE, test_image
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="input side")
    ap.add_argument("--model", default=None, help="default: the registry's default")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="more `esrgan upscale` options (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.png", Path(tmp) / "out.png"
        Image.fromarray(test_image(args.image, args.size)).save(src)
        cmd = [sys.executable, "-m", "esrgan_cli", "upscale", str(src), "-o", str(out), "-q",
               *(["--model", args.model] if args.model else []), *args.extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        times = []
        for i in range(args.repeats):
            out.unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}: {times[-1]:.2f} s", flush=True)
        print(f"{args.size}×{args.size} → {Image.open(out).size[0]}×{Image.open(out).size[1]}, "
              f"model {args.model or 'default'}: best {min(times):.2f} s end to end")


if __name__ == "__main__":
    main()
