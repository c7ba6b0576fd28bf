"""Images per second: the local batch against the same batch on a Ray cluster with 1 and 2 replicas (issue 15).

All on this machine: the cluster is `--ray local` (started and stopped per configuration; start-up is reported
apart and not counted). Same images (crops of the shared training images, or random ones without ../shared), same
model (the bundled default), same journal. Ray's overhead per image is measured twice: as the difference between
one replica and the local batch on the real images, and on 4×4 images, where nearly all the time is overhead.
With --gpus, the local batch is compared with one replica per GPU (`--workers N` without Ray) instead.

    python benchmarks/bench_cluster.py --images 24 --size 128 --json cluster.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from bench_batch import make_inputs  # benchmarks/ is the script's folder, so it is on sys.path

import esrgan_cli
from esrgan_cli.batch._jobs import list_jobs
from esrgan_cli.batch._journal import Journal, pixel_options
from esrgan_cli.batch._stages import batch_stages
from esrgan_cli.batch.cluster.driver import Journaling, open_driver
from esrgan_cli.batch.cluster.protocol import ClusterOptions
from esrgan_cli.batch.cluster.worker import WorkerConfig
from esrgan_cli.batch.plan import BatchOptions, plan_batch
from esrgan_cli.batch.runner import run_batch
from esrgan_cli.files import sha256_of
from esrgan_cli.model.registry import load_registry, resolve_model
from esrgan_cli.model.weights import load_weights
from esrgan_cli.upscale.pipeline import UpscaleOptions

OPTIONS = UpscaleOptions()
THREADS = [1]  # torch threads per model replica (the local batch is one replica)


def local_batch(src: Path, out: Path, model: str) -> float:
    if THREADS[0]:
        torch.set_num_threads(THREADS[0])
    upscaler = esrgan_cli.load_model(model, device="cpu")
    sha = sha256_of(upscaler.weights.path)
    pixels = pixel_options(dataclasses.asdict(OPTIONS), 95, "float32")
    out.mkdir()
    jobs, _ = list_jobs([str(src)], out)
    journal = Journal(out)
    stages = batch_stages(upscaler, OPTIONS, 95, journal, sha, pixels)
    start = time.perf_counter()
    outcomes = run_batch(jobs, stages)
    assert not [o for o in outcomes if o.error]
    return time.perf_counter() - start


def distributed(src: Path, out: Path, model: str, cluster: ClusterOptions) -> tuple[float, float]:
    """(start-up seconds, batch seconds)."""
    weights = load_weights(model)
    start = time.perf_counter()
    driver = open_driver(cluster, weights, WorkerConfig(options=OPTIONS, quality=95, threads=THREADS[0],
                                                        device=os.environ.get("BENCH_DEVICE", "cpu")))
    try:
        info = driver.first_ready()
        while sum(s.ready for s in driver.slots.values()) < driver.workers:  # every replica loaded
            driver._handle(driver.pool.poll(0.2), lambda job, record: None)
        ready = time.perf_counter() - start
        pixels = pixel_options(dataclasses.asdict(OPTIONS), 95, info.dtype)
        out.mkdir()
        jobs, ignored = list_jobs([str(src)], out)
        journal = Journal(out)
        plan = plan_batch(jobs, ignored, BatchOptions(), journal, sha256_of(weights.path), pixels)
        failed: list[str] = []
        start = time.perf_counter()
        driver.run(plan.todo, Journaling(journal, "sha", pixels), lambda o: o.error and failed.append(o.error))
        seconds = time.perf_counter() - start
        assert not failed, failed
        return ready, seconds
    finally:
        driver.pool.close()


def main() -> None:
    shared = Path(os.environ.get("ESRGAN_SHARED", "../shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--tiny", type=int, default=48, help="4×4 images for the overhead measurement (0: skip)")
    ap.add_argument("--gpus", action="store_true", help="compare 1 process with one per GPU (no Ray)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per replica, the local batch included (0: each setup's default). One "
                         "keeps the comparison about Ray: on a busy machine, more threads than free cores can make "
                         "OpenMP many times slower")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    THREADS[0] = args.threads
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster of this machine only, for the benchmark
    model = str(resolve_model(load_registry().default).path)
    if args.gpus:
        count = torch.cuda.device_count()
        setups = {"1 process": ClusterOptions(workers=1, devices=("cuda:0",)),
                  f"{count} processes (one per GPU)": ClusterOptions(workers=count)}
        os.environ["BENCH_DEVICE"] = "cuda"
    else:
        setups = {f"ray, {n} worker{'s' * (n > 1)}": ClusterOptions(address="local", workers=n,
                                                                  object_store_bytes=200_000_000) for n in (1, 2)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="esr-bench-") as tmp:
        for label, count, size in (("images", args.images, args.size), ("tiny", args.tiny, 4)):
            if not count:
                continue
            src = Path(tmp) / label
            make_inputs(src, count, size, shared)
            seconds = local_batch(src, Path(tmp) / f"{label}-local", model) if not args.gpus else None
            if seconds is not None:
                rows.append({"set": label, "images": count, "size": size, "setup": "local batch", "start_s": 0.0,
                             "seconds": seconds, "images_per_second": count / seconds})
                print(f"{label:6} local batch   {count / seconds:8.2f} images/s", flush=True)
            for name, cluster in setups.items():
                ready, took = distributed(src, Path(tmp) / f"{label}-{len(rows)}", model, cluster)
                rows.append({"set": label, "images": count, "size": size, "setup": name, "start_s": ready,
                             "seconds": took, "images_per_second": count / took})
                print(f"{label:6} {name:14}{count / took:8.2f} images/s (start-up {ready:.1f} s)", flush=True)
            shutil.rmtree(src)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.images} PNG images of {args.size}×{args.size}, x4, bundled default model, CPU, "
          f"{os.cpu_count()} cores, {args.threads or 'default'} torch thread(s) per replica")
    print("| setup | images/s | seconds | start-up (s, not counted) |")
    print("|---|---|---|---|")
    for r in rows:
        if r["set"] == "images":
            print(f"| {r['setup']} | {r['images_per_second']:.2f} | {r['seconds']:.1f} | {r['start_s']:.1f} |")
    by = {(r["set"], r["setup"]): r for r in rows}
    overhead = {}
    for label in ("images", "tiny"):
        local, one = by.get((label, "local batch")), by.get((label, "ray, 1 worker"))
        if local and one:
            overhead[label] = (one["seconds"] - local["seconds"]) / one["images"] * 1000
    if overhead:
        print("Ray's overhead per image (1 worker minus the local batch): "
              + ", ".join(f"{v:.1f} ms on {'4×4' if k == 'tiny' else f'{args.size}×{args.size}'} images"
                          for k, v in overhead.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "overhead_ms_per_image": overhead}, indent=1))


if __name__ == "__main__":
    main()
