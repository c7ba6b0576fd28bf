"""The compact batch planner (`_jobs.list_jobs`) plans exactly what a plain list-of-Paths planner does, and a
large listing costs little memory and time (a scaled-down must-show 4 of issue 15; `benchmarks/bench_plan.py` runs
the million)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esrgan_cli.batch._jobs import Ignored, Job, JobList, list_jobs
from esrgan_cli.batch._journal import Journal
from esrgan_cli.batch.plan import BatchOptions, plan_batch
from esrgan_cli.defaults import FORMAT_SUFFIXES, FORMATS
from esrgan_cli.errors import BatchError
from esrgan_cli.files import image_suffixes

from conftest import ROOT


def reference_collect(inputs: list[str], outdir: Path, recursive: bool = False, fmt: str | None = None,
                      suffix: str = "") -> tuple[list[Job], list[Ignored]]:
    """The planner as it was before issue 15 (Path objects in lists and dicts), kept as the reference, with what
    issue 26 changed: every extension Pillow reads, and broken links, loops and symlinked folders reported."""
    def expand(arg: str) -> list[Path]:
        if glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise BatchError(f"{arg}: no files match")
            return [Path(m) for m in matches]
        if not os.path.lexists(arg):
            raise BatchError(f"{arg}: no such file or folder")
        return [Path(arg)]

    outdir_abs = Path(os.path.abspath(outdir))
    suffixes = image_suffixes()

    def walk(top: Path) -> list[Path]:
        found: list[Path] = []
        if Path(os.path.abspath(top)).is_relative_to(outdir_abs):
            return found  # earlier outputs in an input folder are not inputs
        for name in sorted(os.listdir(top)):
            f = top / name
            if f.is_dir() and not f.is_symlink():
                if recursive:
                    found.extend(walk(f))
                continue
            found.append(f)
        return found

    pairs: list[tuple[Path, Path]] = []
    ignored: list[Ignored] = []
    for arg in inputs:
        for path in expand(arg):
            if path.is_dir():
                for f in walk(path):
                    if f.name.startswith(".esrgan"):
                        continue
                    if f.is_symlink() and f.is_dir():
                        ignored.append(Ignored(str(f), "a symlinked folder (not entered)"))
                    elif not f.is_file() and not f.is_symlink():
                        ignored.append(Ignored(str(f), "not a regular file"))
                    elif f.suffix.lower() in suffixes:
                        pairs.append((f, f.relative_to(path)))
                    else:
                        ignored.append(Ignored(str(f), "not an image extension"))
            else:
                pairs.append((path, Path(path.name)))
    seen: set[Path] = set()
    jobs: list[Job] = []
    claimed: dict[str, Path] = {}
    for src, rel in pairs:
        real = Path(os.path.realpath(src))
        if src.exists():  # a broken link or a loop is its own job, which fails and says what it is
            if real in seen:
                continue
            seen.add(real)
        ext = FORMAT_SUFFIXES[fmt] if fmt else rel.suffix.lower() if rel.suffix.lower() in FORMATS else (
            f"{rel.suffix.lower()}.png")
        key = (rel.parent / f"{rel.stem}{suffix}{ext}").as_posix()
        if key.lower() in claimed:
            raise BatchError(f"{claimed[key.lower()]} and {src} would both write {outdir / key}; "
                             "use --suffix, --format or separate output folders")
        claimed[key.lower()] = src
        if os.path.realpath(outdir / key) == str(real):
            raise BatchError(f"{src}: the output would overwrite the input; choose another output folder or --suffix")
        jobs.append(Job(src, outdir / key, key))
    if not jobs:
        left = f" ({len(ignored)} files without an image extension Pillow reads)" if ignored else ""
        raise BatchError(f"no images to process{left}")
    return jobs, ignored


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for rel in ("a.png", "a-b/x.PNG", "a/b.jpg", "a/b/c.webp", "a.b/d.tif", ".hidden.png", ".png", "x.", "z/.esrgan-x",
                "b/notes.txt", "b/multi.part.jpeg", "sp ace/é.png", "out/old.png", "deep/1/2/3/4/five.gif"):
        touch(root / rel)
    (root / "link.png").symlink_to(root / "a.png")  # the same file twice
    (root / "linkdir").symlink_to(root / "a", target_is_directory=True)  # not entered
    (root / "dangling.png").symlink_to(root / "nowhere.png")
    (root / "loop.png").symlink_to(root / "loop.png")  # a loop: a job that fails, never gone silently
    (root / "dangling.txt").symlink_to(root / "nowhere.txt")
    touch(root / "b" / "gray.pgm")  # every extension Pillow reads
    touch(root / "b" / "model.h5")  # a Pillow stub format: not an image in a folder
    os.mkfifo(root / "b" / "pipe.png")
    return root


@pytest.mark.parametrize("recursive", [True, False])
@pytest.mark.parametrize(("fmt", "suffix"), [(None, ""), ("png", "_x4"), ("webp", "")])
def test_plans_exactly_what_the_reference_planned(odd_tree: Path, recursive: bool, fmt: str | None,
                                                  suffix: str) -> None:
    for inputs, out in (([str(odd_tree)], odd_tree / "out"), ([str(odd_tree / "a"), str(odd_tree / "*.png"),
                                                             str(odd_tree / "a.png")], odd_tree.parent / "o")):
        try:
            want: tuple[list[Job], list[Ignored]] | str = reference_collect(inputs, out, recursive, fmt, suffix)
        except BatchError as e:
            want = str(e)
        try:
            jobs, ignored = list_jobs(inputs, out, recursive, fmt, suffix)
            got: tuple[list[Job], list[Ignored]] | str = (list(jobs), ignored)
        except BatchError as e:
            got = str(e)
        assert got == want


def test_errors_match_the_reference(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "pic.png")
    touch(tmp_path / "in" / "Pic.jpg")
    touch(tmp_path / "in" / "sub" / "q.png")
    cases = [([str(tmp_path / "in")], tmp_path / "out", "png"), ([str(tmp_path / "in" / "pic.png")], tmp_path / "in",
                                                                 None),
             ([str(tmp_path / "in" / "*.gif")], tmp_path / "out", None), ([str(tmp_path / "nope")], tmp_path, None),
             ([str(tmp_path / "in" / "sub")], tmp_path / "in" / "sub", None)]
    for inputs, out, fmt in cases:
        with pytest.raises(BatchError) as want:
            reference_collect(inputs, out, True, fmt)
        with pytest.raises(BatchError) as got:
            list_jobs(inputs, out, True, fmt)
        assert str(got.value) == str(want.value)


def test_job_list_is_a_sequence(odd_tree: Path, tmp_path: Path) -> None:
    jobs, _ = list_jobs([str(odd_tree)], tmp_path / "o", recursive=True)
    assert isinstance(jobs, JobList) and len(jobs) == len(list(jobs)) >= 8
    assert jobs[-1] == list(jobs)[-1] and list(jobs[1:3]) == list(jobs)[1:3]
    with pytest.raises(IndexError):
        jobs[len(jobs)]


def test_planning_hashes_only_inputs_the_journal_knows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        touch(tmp_path / "in" / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    jobs, _ = list_jobs([str(tmp_path / "in")], out)
    journal = Journal(out)
    (out / "3.png").write_bytes(b"done")
    journal.record(jobs[3], "wrong-sha", "m", {})
    hashed: list[Path] = []
    monkeypatch.setattr("esrgan_cli.batch._journal.sha256_of", lambda p: hashed.append(p) or "wrong-sha")
    plan = plan_batch(jobs, [], BatchOptions(), Journal(out), "m", {})
    assert hashed == [jobs[3].src]
    assert [j.key for j in plan.skipped] == ["3.png"] and len(plan.todo) == 4


BIG = r"""
import os, sys, time
from pathlib import Path
def peak():  # VmHWM, not ru_maxrss: that one keeps the parent's peak across fork and exec
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
root, n = Path(sys.argv[1]), int(sys.argv[2])
import numpy
from esrgan_cli.batch._jobs import list_jobs
from esrgan_cli.batch._journal import Journal
from esrgan_cli.batch.plan import BatchOptions, plan_batch
from esrgan_cli.files import image_suffixes
image_suffixes()  # Pillow's plugins, imported once for the list of extensions: not a cost per file
base = peak()
start = time.process_time()
jobs, _ = list_jobs([str(root)], root.parent / "out", recursive=True)
plan = plan_batch(jobs, [], BatchOptions(), Journal(root.parent / "out"), "m", {})
assert len(plan.todo) == n
print((peak() - base) * 1024 / n, time.process_time() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_large_listing_costs_little_memory(tmp_path: Path) -> None:
    """20,000 empty files: under 250 bytes per file (the planner before issue 15 took 1.6 kB), so a million stay far
    under 1 GB. The CPU time is printed, not asserted: this machine may be busy."""
    for d in range(20):
        folder = os.path.join(tmp_path, "in", f"d{d:03}")
        os.makedirs(folder)
        for i in range(1000):
            os.close(os.open(os.path.join(folder, f"{i:04}.png"), os.O_CREAT | os.O_WRONLY))
    proc = subprocess.run([sys.executable, "-c", BIG, str(tmp_path / "in"), "20000"], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    per_file, cpu = map(float, proc.stdout.split())
    assert per_file < 250, per_file
    print(f"planning 20,000 files: {per_file:.0f} bytes and {cpu / 20_000 * 1e6:.0f} µs of CPU per file")
