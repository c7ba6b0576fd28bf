"""The driver's memory and planning time for a million-file batch (issue 15, must show 4).

Creates N empty `.png` files (1,000 folders of 1,000) unless --dir names an existing tree, then, in a fresh process
that measures itself: starts a Ray cluster on this machine with one replica (`--ray local --workers 1`; --no-ray to
skip), plans the batch exactly as `esrgan upscale DIR -o OUT -r` does (listing, collision checks, journal), and
feeds the first --run files to the replica (empty files fail fast, so this shows the driver's memory while
running). Peak memory is the process's VmHWM (ru_maxrss would include the parent's peak across fork and exec).

    python benchmarks/bench_plan.py --files 1000000 --json plan.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path

def mb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024

src, out, run, use_ray = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
result = {"start_mb": mb("VmHWM:")}
from esrgan_cli.batch._jobs import list_jobs
from esrgan_cli.batch._journal import Journal, pixel_options
from esrgan_cli.batch.plan import BatchOptions, plan_batch
from esrgan_cli.upscale.pipeline import UpscaleOptions
options = UpscaleOptions()
driver = None
if use_ray:
    from esrgan_cli.batch.cluster.driver import Journaling, open_driver
    from esrgan_cli.batch.cluster.protocol import ClusterOptions
    from esrgan_cli.batch.cluster.worker import WorkerConfig
    from esrgan_cli.model.registry import load_named
    weights = load_named(None)
    t = time.perf_counter()
    driver = open_driver(ClusterOptions(address="local", workers=1, object_store_bytes=200_000_000), weights,
                         WorkerConfig(options=options, quality=95, device="cpu"))
    dtype = driver.first_ready().dtype
    result["ray_start_s"] = round(time.perf_counter() - t, 1)
    result["after_ray_mb"] = mb("VmHWM:")
else:
    dtype = "float32"
start = time.perf_counter()
jobs, ignored = list_jobs([str(src)], out, recursive=True)
out.mkdir(exist_ok=True)
journal = Journal(out)
pixels = pixel_options(vars(options), 95, dtype)
plan = plan_batch(jobs, ignored, BatchOptions(), journal, "sha", pixels)
result.update(files=len(plan.todo), plan_s=round(time.perf_counter() - start, 1), after_plan_mb=mb("VmHWM:"))
if driver is not None and run:
    first = plan.todo.select(i < run for i in range(len(plan.todo)))
    failed = [0]
    t = time.perf_counter()
    driver.run(first, Journaling(journal, "sha", pixels), lambda o: failed.__setitem__(0, failed[0] + bool(o.error)))
    result.update(ran=len(first), failed=failed[0], run_s=round(time.perf_counter() - t, 1),
                  after_run_mb=mb("VmHWM:"))
    driver.pool.close()
result["peak_mb"] = mb("VmHWM:")
print(json.dumps(result))
"""


def make_files(root: Path, count: int) -> float:
    start = time.perf_counter()
    for d in range((count + 999) // 1000):
        folder = os.path.join(root, f"d{d:04}")
        os.makedirs(folder, exist_ok=True)
        for i in range(min(1000, count - d * 1000)):
            os.close(os.open(os.path.join(folder, f"{i:04}.png"), os.O_CREAT | os.O_WRONLY, 0o644))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, help="an existing tree to plan (default: make --files empty files)")
    ap.add_argument("--run", type=int, default=2000, help="files to send to the replica after planning")
    ap.add_argument("--no-ray", action="store_true", help="plan only, without a cluster")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="esr-plan-") as tmp:
        src = args.dir or Path(tmp) / "in"
        if args.dir is None:
            print(f"creating {args.files:,} empty files ...", flush=True)
            print(f"  {make_files(src, args.files):.0f} s", flush=True)
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(Path(tmp) / "out"), str(args.run),
                               "0" if args.no_ray else "1"], capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    print(f"\n{result['files']:,} files planned in {result['plan_s']} s; driver peak memory {result['peak_mb']:.0f} MB"
          + (f" (of which {result['after_ray_mb']:.0f} MB before planning: Python, torch, Ray)"
             if "after_ray_mb" in result else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
