"""Which files a batch reads and which outputs it writes, planned in little memory, for a million files.

`list_jobs` walks the inputs in the order a sorted `Path.rglob` gives and keeps each job as one short string (its
path relative to its input folder) plus an index of that folder: about 80 bytes a job, where `Job` objects with
`Path`s took 1.6 kB. A `JobList` makes a `Job` when one is asked for. Duplicates (the same file named twice) and
collisions (two inputs, one output) are found afterwards with sorted arrays of 64-bit hashes, and only the few
candidates they flag are compared exactly, so the checks need no per-job dictionaries either.
"""

from __future__ import annotations

import glob
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from esrgan_cli.defaults import FORMAT_SUFFIXES, FORMATS
from esrgan_cli.errors import BatchError
from esrgan_cli.files import image_suffixes, walk_sorted


@dataclass(frozen=True)
class Job:
    """One input file and the output it becomes."""

    src: Path
    dst: Path
    key: str  # the output's path relative to OUTDIR, as recorded in the journal


def _suffix(name: str) -> str:
    """`Path(name).suffix`, without making a Path."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _kept(ext: str) -> str:
    """The output extension for an input's: its own where esrgan writes that format, else PNG, which holds
    everything the others can (16 bits, alpha), after the input's own (`tex.dds` -> `tex.dds.png`). .pgm, .psd and
    .dds are read but not written, and a folder often holds `tex.dds` beside `tex.png`: both become outputs, and
    no second run of the same folder names them differently."""
    ext = ext.lower()
    return ext if ext in FORMATS else f"{ext}.png"


class JobList(Sequence["Job"]):
    """Jobs kept compactly: an input folder (shared) and a relative path each. Items are made on access."""

    def __init__(self, outdir: Path, fmt: str | None = None, suffix: str = "") -> None:
        self.outdir = outdir
        self._ext = FORMAT_SUFFIXES[fmt] if fmt else None
        self._suffix = suffix
        self._roots: list[str] = []
        self._root_index: dict[str, int] = {}
        self._root_of = array("I")
        self._rels: list[str] = []

    def add(self, root: str, rel: str) -> None:
        """A job reading `root/rel` (rel with `/` separators) and writing `outdir/rel` (renamed per options)."""
        index = self._root_index.get(root)
        if index is None:
            index = self._root_index[root] = len(self._roots)
            self._roots.append(root)
        self._root_of.append(index)
        self._rels.append(rel)

    def key(self, i: int) -> str:
        """The output's path relative to OUTDIR, as the journal records it."""
        rel = self._rels[i]
        folder, _, name = rel.rpartition("/")
        ext = _suffix(name)
        stem = name[: len(name) - len(ext)]
        out = f"{stem}{self._suffix}{self._ext or _kept(ext)}"
        return f"{folder}/{out}" if folder else out

    def src(self, i: int) -> Path:
        return Path(self._roots[self._root_of[i]], self._rels[i])

    def job(self, i: int) -> Job:
        key = self.key(i)
        return Job(self.src(i), self.outdir / key, key)

    def select(self, keep: Iterable[bool]) -> JobList:
        """The jobs whose flag is true, in order, sharing this list's folders and strings."""
        out = JobList(self.outdir)
        out._ext, out._suffix, out._roots, out._root_index = self._ext, self._suffix, self._roots, self._root_index
        for i, flag in enumerate(keep):
            if flag:
                out._root_of.append(self._root_of[i])
                out._rels.append(self._rels[i])
        return out

    def __len__(self) -> int:
        return len(self._rels)

    @overload
    def __getitem__(self, i: int) -> Job: ...

    @overload
    def __getitem__(self, i: slice) -> JobList: ...

    def __getitem__(self, i: int | slice) -> Job | JobList:
        if isinstance(i, slice):
            wanted = set(range(len(self))[i])
            return self.select(j in wanted for j in range(len(self)))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.job(i)

    def __iter__(self) -> Iterator[Job]:
        for i in range(len(self)):
            yield self.job(i)


def _expand(arg: str) -> list[Path]:
    if glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise BatchError(f"{arg}: no files match")
        return [Path(m) for m in matches]
    path = Path(arg)
    if not os.path.lexists(path):
        raise BatchError(f"{arg}: no such file or folder")
    return [path]  # a broken symlink or a loop included: its job fails and says what it is


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


@dataclass(frozen=True)
class Ignored:
    """A file in an input folder that the batch does not read, and why."""

    path: str
    reason: str


class _Walk:
    """What walking the inputs found: the jobs, a file identity hash per job, and the files left out."""

    def __init__(self, jobs: JobList, outdir_abs: str) -> None:
        self.jobs = jobs
        self.ids = array("q")  # hash((st_dev, st_ino)) of each source: equal for the same file
        self.ignored: list[Ignored] = []
        self.outdir_abs = outdir_abs
        self.suffixes = image_suffixes()

    def file(self, root: str, rel: str, st: os.stat_result) -> None:
        self.jobs.add(root, rel)
        self.ids.append(hash((st.st_dev, st.st_ino)))

    def named(self, path: Path) -> None:
        """A file named on the command line: taken whatever its extension, written under its own name."""
        self._take(str(path.parent), path.name)

    def _take(self, root: str, rel: str) -> None:
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError:  # a broken symlink or a loop: its read fails and says which, like any unreadable input
            self.jobs.add(root, rel)
            self.ids.append(hash(("unreadable", root, rel)))
            return
        self.file(root, rel, st)

    def folder(self, top: Path, recursive: bool) -> None:
        """Every file under `top` in sorted-path order (`files.walk_sorted`): symlinked folders are not entered,
        unreadable ones are skipped, outputs inside OUTDIR are not inputs."""
        root = str(top)
        try:
            for rel, entry in walk_sorted(root, recursive, self._enter):
                try:
                    if entry.name.startswith(".esrgan"):
                        continue  # our journal and lock file
                    # os.path's tests never raise: DirEntry's do on a symlink loop, which must not vanish.
                    link, is_dir = entry.is_symlink(), os.path.isdir(entry.path)
                    if link and is_dir:
                        self.ignored.append(Ignored(entry.path, "a symlinked folder (not entered)"))
                        continue
                    if not link and not os.path.isfile(entry.path):
                        if not is_dir:  # a FIFO, socket or device: never read
                            self.ignored.append(Ignored(entry.path, "not a regular file"))
                        continue
                    if _suffix(entry.name).lower() not in self.suffixes:
                        self.ignored.append(Ignored(entry.path, "not an image extension"))
                        continue
                    self._take(root, rel)  # a broken symlink or a loop fails with its reason, never vanishes
                except OSError:
                    continue  # gone or unreadable since the listing: as if never there
        except OSError as e:  # only `top` itself raises: an unreadable subfolder is skipped
            raise BatchError(f"{root}: cannot list ({e.strerror or e})") from None

    def _enter(self, path: str) -> bool:
        return not _inside(os.path.abspath(path), self.outdir_abs)  # earlier outputs in an input folder: not inputs


def list_jobs(
    inputs: Iterable[str], outdir: Path, recursive: bool = False, fmt: str | None = None, suffix: str = ""
) -> tuple[JobList, list[Ignored]]:
    """Plan every output before any work: the jobs and the files of input folders left out. Raises
    `BatchError` when there is nothing to do, a path is missing, or two inputs would write one output."""
    walk = _Walk(JobList(outdir, fmt, suffix), os.path.abspath(outdir))
    for arg in inputs:
        for path in _expand(arg):
            if os.path.isdir(path):
                walk.folder(path, recursive)
            else:
                walk.named(path)
    ignored = walk.ignored
    keep = _first_of_each_file(walk.jobs, walk.ids)
    jobs = walk.jobs.select(keep)
    ids = array("q", (v for v, k in zip(walk.ids, keep, strict=True) if k))
    del walk, keep
    _check_outputs(jobs, ids, outdir)
    if not len(jobs):
        left = f" ({len(ignored)} files without an image extension Pillow reads)" if ignored else ""
        raise BatchError(f"no images to process{left}")
    return jobs, ignored


def _repeated(values: Sequence[int]) -> list[list[int]]:
    """Groups (of indices, ascending) of equal values; a sort of 64-bit integers, so cheap for millions."""
    import numpy as np

    arr = np.frombuffer(values, dtype=np.int64) if isinstance(values, array) else np.asarray(values, np.int64)
    if arr.size < 2:
        return []
    order = np.argsort(arr, kind="stable")
    ordered = arr[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return []
    groups: dict[int, list[int]] = {}
    for pos in np.flatnonzero(same):
        for p in (pos, pos + 1):
            groups.setdefault(int(ordered[p]), []).append(int(order[p]))
    return [sorted(set(g)) for g in groups.values()]


def _first_of_each_file(jobs: JobList, ids: Sequence[int]) -> list[bool]:
    """False for a job whose source is a file already named earlier (same real path)."""
    keep = [True] * len(jobs)
    for group in _repeated(ids):
        seen: set[str] = set()
        for i in group:
            real = os.path.realpath(jobs.src(i))
            if real in seen:
                keep[i] = False
            seen.add(real)
    return keep


def _check_outputs(jobs: JobList, ids: Sequence[int], outdir: Path) -> None:
    """Refuse two inputs writing one output (case-insensitively, as macOS and Windows file systems compare), and
    an output that is its own input; the first problem in input order is reported."""
    keys = (jobs.key(i).lower() for i in range(len(jobs)))
    first: tuple[int, str] | None = None
    for group in _repeated(array("q", (hash(k) for k in keys))):
        claimed: dict[str, int] = {}
        for i in group:
            k = jobs.key(i).lower()
            if k in claimed and (first is None or i < first[0]):
                first = (i, f"{jobs.src(claimed[k])} and {jobs.src(i)} would both write {outdir / jobs.key(i)}; "
                            "use --suffix, --format or separate output folders")
            claimed.setdefault(k, i)
    if os.path.isdir(outdir):
        for i in range(len(jobs) if first is None else first[0]):
            try:
                st = os.stat(outdir / jobs.key(i))
            except OSError:
                continue
            if hash((st.st_dev, st.st_ino)) == ids[i] and \
                    os.path.realpath(outdir / jobs.key(i)) == os.path.realpath(jobs.src(i)):
                first = (i, f"{jobs.src(i)}: the output would overwrite the input; choose another output folder "
                            "or --suffix")
                break
    if first is not None:
        raise BatchError(first[1])
