"""Batch throughput on many small images, with and without overlapping decode/encode with the model.

Writes N PNG crops of the shared training images (or random images without ../shared) to a temporary folder and
runs the same stages `esrgan upscale DIR -o OUT` uses, through `run_batch`, with `overlap_io` on and off.
Reports images per second (best of --repeats) for each model and writes JSON.

    python benchmarks/bench_batch.py --images 48 --size 96 --json batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import esrgan_cli
from esrgan_cli.batch._jobs import list_jobs
from esrgan_cli.batch._stages import batch_stages
from esrgan_cli.batch.runner import run_batch
from esrgan_cli.model.arch import RRDBConfig, RRDBNet, init_weights
from esrgan_cli.model.weights import LoadedWeights, load_weights
from esrgan_cli.upscale.pipeline import UpscaleOptions


def make_inputs(folder: Path, count: int, size: int, shared: Path) -> None:
    """`count` photo crops of `size`² (random pixels without ../shared, or for sizes of 8 and under)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((shared / "trainsets").rglob("*.png"))[:count] if shared.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(count):
        if sources and size > 8:
            img = Image.open(sources[i % len(sources)]).convert("RGB")
            x, y = (img.width - size) // 2, (img.height - size) // 2
            img = img.crop((x, y, x + size, y + size))
        else:
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        img.save(folder / f"{i:04}.png")


def light_model() -> LoadedWeights:
    config = RRDBConfig(num_feat=16, num_block=2, num_grow=8)
    model = init_weights(RRDBNet(config), seed=0)
    return LoadedWeights(model.state_dict(), config, {}, Path("light"), torch.float32)


def main() -> None:
    shared = Path(os.environ.get("ESRGAN_SHARED", "../shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    models = {"light (2 blocks, 16 features)": light_model()}
    anime = shared / "weights/realesrgan-x4plus-anime-6b.fp16.safetensors"
    if anime.is_file():
        models["realesrgan anime 6 blocks"] = load_weights(anime)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        make_inputs(src, args.images, args.size, shared)
        for name, weights in models.items():
            upscaler = esrgan_cli.load_model(weights, device=args.device)
            placement = upscaler.placement
            for overlap_io in (False, True):
                best = float("inf")
                for r in range(args.repeats):
                    jobs, _ = list_jobs([str(src)], Path(tmp) / f"out{r}")
                    stages = batch_stages(upscaler, UpscaleOptions(tile=0), quality=95)
                    t0 = time.perf_counter()
                    outcomes = run_batch(jobs, stages, overlap_io=overlap_io)
                    best = min(best, time.perf_counter() - t0)
                    assert not [o for o in outcomes if o.error]
                row = {"model": name, "overlap_io": overlap_io, "images": args.images, "size": args.size,
                       "seconds": best, "images_per_second": args.images / best}
                results.append(row)
                print(f"{name:32} overlap_io={overlap_io!s:5}  {args.images / best:7.2f} images/s", flush=True)
    print(f"\n{args.images} PNG images of {args.size}×{args.size}, x4, {placement.device} "
          f"{str(placement.dtype).removeprefix('torch.')}, torch threads {torch.get_num_threads()}")
    print("| model | sequential (images/s) | overlapped decode/encode (images/s) | speed-up |")
    print("|---|---|---|---|")
    for name in models:
        seq, ovl = (r["images_per_second"] for r in results if r["model"] == name)
        print(f"| {name} | {seq:.2f} | {ovl:.2f} | {ovl / seq:.2f}× |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
