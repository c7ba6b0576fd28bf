"""Run `esrgan upscale` over a corpus of image files as a user would, one process per file and then one batch,
and count what each run printed: the check behind "one line per file, whatever the file".

    python benchmarks/corpus_run.py PILLOW/Tests/images --out /tmp/corpus [--jobs 2] [--timeout 120]

Each file is upscaled alone (`esrgan upscale FILE -o OUT.png`), then the whole folder as one batch
(`esrgan upscale FOLDER -o OUTDIR -r --report R.json`). A file run is well behaved when it exits 0 with at most
one line of notes on stderr besides its `wrote` line, or exits 1 with exactly one `esrgan: error:` line; anything
else (a traceback, a second line, output on stdout, another exit code, a timeout) is listed as "beyond". The JSON
written to `--out`/results.json keeps every run's exit code and output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _run(cmd: list[str], timeout: float) -> dict[str, object]:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, errors="replace")
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"rc": rc, "stdout": out, "stderr": err, "seconds": round(time.perf_counter() - start, 2)}


def _verdict(result: dict[str, object]) -> str:
    """ok, refused (one line, exit 1), or beyond (anything else)."""
    rc, out = result["rc"], str(result["stdout"])
    # Every line esrgan prints starts "esrgan: "; the wrote line and the notes line are the expected ones.
    lines = [line.removeprefix("esrgan: ") for line in str(result["stderr"]).splitlines() if line.strip()]
    if out.strip():
        return "beyond"
    if rc == 0:
        notes = [line for line in lines if not line.startswith("wrote ")]
        return "ok" if len(notes) <= 1 and len(lines) - len(notes) == 1 else "beyond"
    if rc == 1 and len(lines) == 1 and lines[0].startswith("error: "):
        return "refused"
    return "beyond"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-batch", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files (a quick look)")
    args = parser.parse_args()

    files = sorted(p for p in args.corpus.rglob("*") if p.is_file() or p.is_symlink())
    if args.limit:
        files = files[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    esrgan = [sys.executable, "-m", "esrgan_cli", "upscale"]

    def one(i_path: tuple[int, Path]) -> dict[str, object]:
        i, path = i_path
        dst = args.out / "single" / f"{i:05d}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        result = _run([*esrgan, str(path), "-o", str(dst)], args.timeout)
        dst.unlink(missing_ok=True)  # only what was printed matters here; outputs would fill the disk
        result["file"] = str(path.relative_to(args.corpus))
        result["verdict"] = _verdict(result)
        print(f"{i + 1}/{len(files)} {result['verdict']:8} {result['seconds']:6.1f} s  {result['file']}",
              file=sys.stderr, flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        singles = list(pool.map(one, enumerate(files)))
    counts = {v: sum(1 for r in singles if r["verdict"] == v) for v in ("ok", "refused", "beyond")}
    summary: dict[str, object] = {"files": len(files), **counts,
                                  "beyond_files": [r["file"] for r in singles if r["verdict"] == "beyond"]}
    batch: dict[str, object] | None = None
    if not args.no_batch:
        report = args.out / "batch-report.json"
        outdir = args.out / "batch"
        batch = _run([*esrgan, str(args.corpus), "-o", str(outdir), "-r", "--report", str(report)],
                     args.timeout * 20)
        stderr_lines = [line for line in str(batch["stderr"]).splitlines() if line.strip()]
        data = json.loads(report.read_text()) if report.exists() else {}
        failed = len(data.get("failed", []))
        # A batch says one line per failed file, at most one per file with notes, a plan line and a summary.
        summary["batch"] = {
            "rc": batch["rc"], "seconds": batch["seconds"], "done": len(data.get("done", [])),
            "failed": failed, "ignored": len(data.get("ignored", [])), "stderr_lines": len(stderr_lines),
            "stdout_lines": len(str(batch["stdout"]).splitlines()),
            "tracebacks": str(batch["stderr"]).count("Traceback"),
        }
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "singles": singles, "batch": batch},
                                                      indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
