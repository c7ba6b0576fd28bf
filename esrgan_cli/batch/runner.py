"""The batch runner, generic over three stages (decode, compute, encode) so it can be tested with fakes and measured
with and without overlapping the stages. No printing: callers report through `Stages.on_done`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from esrgan_cli.batch._jobs import Job
from esrgan_cli.errors import DiskFullError, EsrganError

D = TypeVar("D")
R = TypeVar("R")


@dataclass(frozen=True)
class Written:
    """What writing one file gave, wherever it ran (the encode stage here, a replica there): input megapixels
    processed, notes for the user, and frames or pages written (an animation or a multi-page TIFF has several)."""

    megapixels: float
    notes: tuple[str, ...] = ()
    frames: int = 1


@dataclass(frozen=True)
class Outcome:
    """One job's end: what was written, or why it failed."""

    job: Job
    written: Written | None = None
    error: str | None = None
    exception: EsrganError | None = None  # the failure itself, for --debug

    @classmethod
    def failed(cls, job: Job, e: EsrganError) -> Outcome:
        return cls(job, error=str(e), exception=e)

    @property
    def megapixels(self) -> float:
        return self.written.megapixels if self.written else 0.0

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should know about this file (decoder warnings, dropped alpha)."""
        return self.written.notes if self.written else ()

    @property
    def frames(self) -> int:
        return self.written.frames if self.written else 0

    @property
    def stops_batch(self) -> bool:
        """A full disk stops the batch: every later write would fail the same way."""
        return isinstance(self.exception, DiskFullError)


@dataclass
class Stages(Generic[D, R]):
    decode: Callable[[Job], D]
    compute: Callable[[Job, D], R]
    encode: Callable[[Job, D, R], Written]
    on_done: Callable[[Outcome], None] = field(default=lambda o: None)


def run_batch(jobs: Sequence[Job], stages: Stages[D, R], overlap_io: bool = True, depth: int = 2) -> list[Outcome]:
    """Run every job; an EsrganError fails that job only, except a full disk, which stops the batch after that
    job (what is written is in the journal, so a rerun resumes). Ctrl-C stops after the write in flight.

    With `overlap_io`, decoding the next image and encoding the previous one run on threads beside the model,
    through queues of `depth` items so memory stays flat whatever the batch size."""
    if overlap_io:
        return _Overlapped(stages, depth).run(jobs)
    return _run_serial(jobs, stages)


def _run_serial(jobs: Sequence[Job], stages: Stages[D, R]) -> list[Outcome]:
    """One job after another, each decoded, computed and encoded before the next is read."""
    outcomes: list[Outcome] = []
    for job in jobs:
        try:
            data = stages.decode(job)
            outcome = Outcome(job, stages.encode(job, data, stages.compute(job, data)))
        except EsrganError as e:
            outcome = Outcome.failed(job, e)
        outcomes.append(outcome)
        stages.on_done(outcome)
        if outcome.stops_batch:
            break
    return outcomes


_END = object()


class _Overlapped(Generic[D, R]):
    """Three stages at once: a reader thread decodes ahead, this thread runs the model, a writer thread encodes
    behind. Two bounded queues join them; `stop` ends every loop (Ctrl-C, a bug), `halt` drops work not yet
    written (a full disk), and an unexpected error in a thread is re-raised in this one, never swallowed."""

    def __init__(self, stages: Stages[D, R], depth: int) -> None:
        self.stages = stages
        self.stop = threading.Event()
        self.halt = threading.Event()
        self.failure: list[BaseException] = []
        self.decoded: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.computed: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        threads = [threading.Thread(target=self._guarded(lambda: self._read(jobs)), daemon=True),
                   threading.Thread(target=self._guarded(self._write), daemon=True)]
        for t in threads:
            t.start()
        try:
            self._compute()
            self._put(self.computed, _END)
            threads[1].join()
        except BaseException:
            # Ctrl-C (or a bug): stop reading and drop queued work, but let the write in
            # flight finish so no temp file or half-written output stays behind.
            self.stop.set()
            threads[1].join()
            raise
        if self.failure:
            raise self.failure[0]
        return self.outcomes

    def _read(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if self.stop.is_set():
                return
            if self.halt.is_set():
                break
            try:
                item: Any = (job, self.stages.decode(job), None)
            except EsrganError as e:
                item = (job, None, e)
            self._put(self.decoded, item)
        self._put(self.decoded, _END)

    def _compute(self) -> None:
        while (item := self._get(self.decoded)) is not _END:
            job, data, error = item
            if self.halt.is_set():
                continue
            if error is None:
                try:
                    self._put(self.computed, (job, data, self.stages.compute(job, data)))
                    continue
                except EsrganError as e:
                    error = e
            self._finish(Outcome.failed(job, error))

    def _write(self) -> None:
        while (item := self._get(self.computed)) is not _END:
            job, data, result = item
            if self.halt.is_set():
                continue  # dropped: not in the journal, so the rerun does it
            try:
                outcome = Outcome(job, self.stages.encode(job, data, result))
            except EsrganError as e:
                outcome = Outcome.failed(job, e)
            self._finish(outcome)
            if outcome.stops_batch:
                self.halt.set()

    def _finish(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            self.stages.on_done(outcome)

    def _guarded(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as e:  # handed to the main thread, never swallowed
                self.failure.append(e)
                self.stop.set()

        return run

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue[Any]) -> Any:
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END
