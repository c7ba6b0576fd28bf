"""Measure how much tile context (--overlap) is needed for tiled output to match the untiled one.

For every image, the untiled float output is the reference; each overlap is run
at the given tile size and scored by PSNR over the whole output (peak 1.0), plus
the time it took. Prints a table (mean and worst image per overlap) and writes JSON.

    python benchmarks/tile_overlap.py --model ../shared/weights/realesrgan-x4plus.fp16.safetensors \
        --tile 64 --overlaps 8,16,24,32 --json overlap.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

import esrgan_cli
from esrgan_cli.image.decode import read_image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> None:
    shared = Path(os.environ.get("ESRGAN_SHARED", "../shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(shared / "weights/realesrgan-x4plus.fp16.safetensors"))
    ap.add_argument("--images", nargs="*", type=Path,
                    default=sorted((shared / "testsets").glob("Set*/LR_bicubic/X4/*.png")))
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--overlaps", default="8,16,24,32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    overlaps = [int(x) for x in args.overlaps.split(",")]
    up = esrgan_cli.load_model(args.model, device=args.device, precision="fp32")
    rows = []
    for path in args.images:
        img = read_image(path)
        t0 = time.perf_counter()
        ref = up.upscale(img.rgb, tile=0)
        row = {"image": path.name, "size": [img.width, img.height], "untiled_s": time.perf_counter() - t0}
        for ov in overlaps:
            t0 = time.perf_counter()
            out = up.upscale(img.rgb, tile=args.tile, overlap=ov)
            row[f"overlap_{ov}"] = {"psnr": psnr(out, ref), "s": time.perf_counter() - t0}
        rows.append(row)
        print(path.name, " ".join(f"{ov}:{row[f'overlap_{ov}']['psnr']:.2f}" for ov in overlaps), flush=True)
    print(f"\ntile {args.tile}, {len(rows)} images, PSNR of tiled vs untiled output (dB)")
    print("| overlap | all images pooled | worst image | images under 45 dB | time vs untiled |")
    print("|---|---|---|---|---|")
    summary = {}
    for ov in overlaps:
        vals = [r[f"overlap_{ov}"]["psnr"] for r in rows]
        # Pool the squared error over images: a mean of per-image dB is undefined when a
        # small image fits in one window and comes out identical (inf dB).
        pooled = -10 * math.log10(max(float(np.mean([10 ** (-v / 10) for v in vals])), 1e-30))
        worst = min(range(len(rows)), key=lambda i: vals[i])
        under = sum(v < 45 for v in vals)
        ratio = sum(r[f"overlap_{ov}"]["s"] for r in rows) / sum(r["untiled_s"] for r in rows)
        summary[ov] = {"pooled": pooled, "worst": vals[worst], "worst_image": rows[worst]["image"],
                       "under_45": under, "time_ratio": ratio}
        print(f"| {ov} | {pooled:.2f} | {vals[worst]:.2f} ({rows[worst]['image']}) | {under} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"tile": args.tile, "model": args.model, "rows": rows,
                                         "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
