"""Batch upscaling: which files go where, what is already done, and a pipelined runner.

No printing: the CLI reports through the callbacks. The runner is generic over
three stages (decode, compute, encode) so it can be tested with fakes and
measured with and without overlapping the stages.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from esrgan_cli.batch.jobs import JobList, list_jobs
from esrgan_cli.errors import DiskFullError, EsrganError
from esrgan_cli.files import sha256_of

JOURNAL_NAME = ".esrgan-journal.jsonl"


class BatchError(EsrganError):
    """The batch cannot start: no inputs, a missing path, or two inputs that would write one output."""


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    key: str  # the output's path relative to OUTDIR, as recorded in the journal


def collect_jobs(
    inputs: Iterable[str], outdir: Path, recursive: bool = False, fmt: str | None = None, suffix: str = ""
) -> tuple[JobList, int]:
    """Plan every output before any work: returns the jobs (compact, for a million files) and how many non-image
    files were ignored. Two inputs that would write one output, or an output that is its input, raise BatchError."""
    return list_jobs(inputs, outdir, recursive, fmt, suffix)


@dataclass(frozen=True)
class BatchOptions:
    """How a batch finds its inputs and names its outputs. Pass by keyword."""

    recursive: bool = False
    format: str | None = None  # png, jpg, webp, tiff; None keeps each input's
    suffix: str = ""
    overwrite: bool = False  # redo outputs the journal says are done
    report: Path | None = None  # JSON report of done, skipped and failed files


@dataclass(frozen=True)
class BatchPlan:
    todo: Sequence[Job]
    skipped: Sequence[Job]  # done and still valid, per the journal
    ignored: int  # files without an image extension


def pixel_options(options: dict[str, Any], quality: int, dtype: str) -> dict[str, Any]:
    """What the journal compares to decide whether an output is still valid: every option that changes pixels."""
    kept = {k: v for k, v in options.items() if k not in ("max_output_pixels", "alpha_loss")}
    if not kept.get("first_frame", True):
        del kept["first_frame"]  # the default: journals written before the option existed stay valid
    return {**kept, "quality": quality, "dtype": dtype}


def plan_batch(
    jobs: Sequence[Job], ignored: int, options: BatchOptions, journal: Journal, model_sha256: str,
    pixels: dict[str, Any],
) -> BatchPlan:
    """The jobs of `collect_jobs`, split into what to do and what the journal says is done (unless `overwrite`).
    An input is hashed only when the journal has an entry for its output."""
    if options.overwrite or not journal.entries:
        done = [False] * len(jobs)
    elif isinstance(jobs, JobList):
        done = [jobs.key(i) in journal.entries and journal.is_done(jobs.job(i), model_sha256, pixels)
                for i in range(len(jobs))]
    else:
        done = [journal.is_done(j, model_sha256, pixels) for j in jobs]
    if isinstance(jobs, JobList):
        return BatchPlan(jobs.select(not d for d in done), jobs.select(done), ignored)
    pairs = list(zip(jobs, done, strict=True))
    return BatchPlan([j for j, d in pairs if not d], [j for j, d in pairs if d], ignored)


def write_report(path: Path, plan: BatchPlan, outcomes: Sequence[Outcome], model: str, model_sha256: str,
                 seconds: float) -> None:
    """The `--report` JSON: done, skipped and failed files, the model, and the throughput."""
    from esrgan_cli.files import atomic_write

    done = [o for o in outcomes if not o.error]
    mpx = sum(o.megapixels for o in done)
    data = {
        "model": model, "model_sha256": model_sha256, "seconds": round(seconds, 3),
        "input_megapixels_per_second": round(mpx / seconds, 4) if seconds > 0 else None,
        "done": [{"input": str(o.job.src), "output": str(o.job.dst)} for o in done],
        "skipped": [{"input": str(j.src), "output": str(j.dst)} for j in plan.skipped],
        "failed": [{"input": str(o.job.src), "output": str(o.job.dst), "error": o.error}
                   for o in outcomes if o.error],
    }
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class Journal:
    """An append-only JSON-lines record in OUTDIR of outputs that were completely written.

    An entry counts only while the input's sha256, the model's sha256 and the
    pixel-changing options still match and the output still has its recorded size.
    """

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / JOURNAL_NAME
        # output key → (input sha256, model sha256, options, output size). Compact, with the model and options
        # shared between entries, and read line by line, so a journal of a million files fits in little memory.
        self.entries: dict[str, tuple[Any, Any, Any, Any]] = {}
        self.retain = True  # keep what `record` writes in `entries` (a driver that is done planning need not)
        self._lock = threading.Lock()
        shared: dict[str, Any] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        model, options = entry.get("model_sha256"), entry.get("options")
                        model = shared.setdefault(f"m{model}", model)
                        options = shared.setdefault(json.dumps(options, sort_keys=True), options)
                        self.entries[entry["output"]] = (entry.get("input_sha256"), model, options,
                                                         entry.get("output_size"))
                    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                        continue  # a line cut short by a crash: that output is simply redone

    def is_done(self, job: Job, model_sha256: str, options: dict[str, Any]) -> bool:
        entry = self.entries.get(job.key)
        if not entry or entry[1] != model_sha256 or entry[2] != options:
            return False
        try:
            if job.dst.stat().st_size != entry[3]:
                return False
        except OSError:
            return False
        return entry[0] == sha256_of(job.src)

    def record(self, job: Job, input_sha256: str, model_sha256: str, options: dict[str, Any],
               output_size: int | None = None) -> None:
        """Append the entry of a completely written output (`output_size`: its size, if the writer knows it)."""
        size = job.dst.stat().st_size if output_size is None else output_size
        entry = {"output": job.key, "input": str(job.src), "input_sha256": input_sha256,
                 "model_sha256": model_sha256, "options": options, "output_size": size,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self._append(line)
            if self.retain:
                self.entries[job.key] = (input_sha256, model_sha256, options, size)

    def _append(self, line: bytes) -> None:
        """Append one whole line, or nothing: a write that fails (a full disk) is cut back off."""
        from esrgan_cli.files import write_failure

        try:
            with open(self.path, "a+b", buffering=0) as f:
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line  # a line cut short by a crash stays on its own line
                try:
                    view = memoryview(line)
                    while view:
                        view = view[f.write(view) or 0:]
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(size)
                    raise
        except OSError as e:
            raise write_failure(self.path, e, "cannot record in the journal") from None


D = TypeVar("D")
R = TypeVar("R")


@dataclass
class Outcome:
    job: Job
    error: str | None = None
    megapixels: float = 0.0
    notes: tuple[str, ...] = ()  # what the user should know about this file (decoder warnings, dropped alpha)
    exception: EsrganError | None = None  # the failure itself, for --debug
    frames: int = 1  # frames or pages written

    @property
    def stops_batch(self) -> bool:
        """A full disk stops the batch: every later write would fail the same way."""
        return isinstance(self.exception, DiskFullError)


@dataclass(frozen=True)
class Written:
    """What the encode stage reports: input megapixels processed and notes for the user."""

    megapixels: float
    notes: tuple[str, ...] = ()
    frames: int = 1  # frames or pages written (an animation or a multi-page TIFF has several)


@dataclass
class Stages(Generic[D, R]):
    decode: Callable[[Job], D]
    compute: Callable[[Job, D], R]
    encode: Callable[[Job, D, R], float | Written]  # input megapixels processed (and notes)
    on_done: Callable[[Outcome], None] = field(default=lambda o: None)


def _done(job: Job, written: float | Written) -> Outcome:
    if isinstance(written, Written):
        return Outcome(job, megapixels=written.megapixels, notes=written.notes, frames=written.frames)
    return Outcome(job, megapixels=written)


def _failed(job: Job, e: EsrganError) -> Outcome:
    return Outcome(job, str(e), exception=e)


_END = object()


def run_batch(jobs: Sequence[Job], stages: Stages[D, R], overlap_io: bool = True, depth: int = 2) -> list[Outcome]:
    """Run every job; an EsrganError fails that job only, except a full disk, which stops the batch after that
    job (what is written is in the journal, so a rerun resumes). Ctrl-C stops after the write in flight.

    With `overlap_io`, decoding the next image and encoding the previous one run
    on threads beside the model, through queues of `depth` items so memory
    stays flat whatever the batch size.
    """
    outcomes: list[Outcome] = []

    def finish(outcome: Outcome) -> None:
        outcomes.append(outcome)
        stages.on_done(outcome)

    if not overlap_io:
        for job in jobs:
            try:
                data = stages.decode(job)
                finish(_done(job, stages.encode(job, data, stages.compute(job, data))))
            except EsrganError as e:
                finish(_failed(job, e))
                if outcomes[-1].stops_batch:
                    break
        return outcomes

    stop = threading.Event()
    halt = threading.Event()  # a full disk: finish nothing more, keep what is written
    failure: list[BaseException] = []  # an unexpected error in a worker thread, re-raised in this one
    decoded: queue.Queue[Any] = queue.Queue(maxsize=depth)
    computed: queue.Queue[Any] = queue.Queue(maxsize=depth)
    lock = threading.Lock()

    def put(q: queue.Queue[Any], item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(q: queue.Queue[Any]) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as e:  # handed to the main thread, never swallowed
                failure.append(e)
                stop.set()

        return run

    def reader() -> None:
        for job in jobs:
            if stop.is_set():
                return
            if halt.is_set():
                break
            try:
                item: Any = (job, stages.decode(job), None)
            except EsrganError as e:
                item = (job, None, e)
            put(decoded, item)
        put(decoded, _END)

    def writer() -> None:
        while (item := get(computed)) is not _END:
            job, data, result = item
            if halt.is_set():
                continue  # dropped: not in the journal, so the rerun does it
            try:
                outcome = _done(job, stages.encode(job, data, result))
            except EsrganError as e:
                outcome = _failed(job, e)
            with lock:
                finish(outcome)
            if outcome.stops_batch:
                halt.set()

    threads = [threading.Thread(target=guarded(reader), daemon=True),
               threading.Thread(target=guarded(writer), daemon=True)]
    for t in threads:
        t.start()
    try:
        while (item := get(decoded)) is not _END:
            job, data, error = item
            if halt.is_set():
                continue
            if error is None:
                try:
                    put(computed, (job, data, stages.compute(job, data)))
                    continue
                except EsrganError as e:
                    error = e
            with lock:
                finish(_failed(job, error))
        put(computed, _END)
        threads[1].join()
    except BaseException:
        # Ctrl-C (or a bug): stop reading and drop queued work, but let the write in
        # flight finish so no temp file or half-written output stays behind.
        stop.set()
        threads[1].join()
        raise
    if failure:
        raise failure[0]
    return outcomes
