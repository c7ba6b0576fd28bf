"""How soon `esrgan train` shows something: seconds from starting the process to its first line on stderr, to the
bar (a terminal: a pseudo-terminal here) or the "training on" line (a pipe), and to the first progress of an
iteration, with default options on a folder of training images. The process is stopped with Ctrl-C afterwards.

    python benchmarks/bench_train_start.py ../shared/trainsets/BSD200 [--first-iteration] [-- EXTRA TRAIN OPTIONS]
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _watch(data: str, extra: list[str], tty: bool, wait_iteration: bool) -> dict[str, float]:
    out = Path(tempfile.mkdtemp()) / "run"
    cmd = [sys.executable, "-m", "esrgan_cli", "train", "--stage", "psnr", "--data", data, "--out", str(out), *extra]
    env = {**os.environ, "COLUMNS": "120"}
    marks: dict[str, float] = {}
    steps: dict[str, float] = {}  # each line and when it came
    t0 = time.perf_counter()
    if tty:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=follower)
        os.close(follower)
        fd = leader
    else:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
    seen = ""
    while proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536).decode("utf-8", "replace")
        except OSError:
            break
        now = time.perf_counter() - t0
        for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chunk).splitlines():
            if line.startswith("esrgan: ") and line not in steps:
                steps[line] = now
        seen += chunk
        if seen.strip() and "first line" not in marks:
            marks["first line"] = now
        if ("training on" in seen or "train " in seen and "0/1000" in seen) and "progress shown" not in marks:
            marks["progress shown"] = now
            if not wait_iteration:
                break
        if re.search(r"iteration 1/|\b1/1000\b", seen):
            marks["first iteration done"] = now
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    print("\n".join(f"  {t:6.2f} s  {line}" for line, t in steps.items()))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--first-iteration", action="store_true", help="wait for the first iteration too")
    parser.add_argument("extra", nargs="*")
    a = parser.parse_args()
    for tty in (False, True):
        marks = _watch(a.data, a.extra, tty, a.first_iteration)
        print(("terminal: " if tty else "pipe:     ") + ", ".join(f"{k} {v:.2f} s" for k, v in marks.items()))


if __name__ == "__main__":
    main()
