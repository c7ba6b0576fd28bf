"""The driver of a distributed batch: model replicas on a Ray cluster or on this machine's GPUs, fed one file at a
time, with the local batch's journal, skip rules and failure reporting.

The driver plans the jobs (`batch.jobs.list_jobs`, `batch.plan.plan_batch`) and keeps a few files in flight per replica
(`ClusterOptions.depth`), so its memory does not grow with the batch. A replica answers each file with a small
`Record`; the driver appends it to the journal as it arrives, so an interrupted run resumes where it stopped, on
the cluster or locally. A replica that dies (its process killed, its node lost) has its files sent to another;
a stale temp file it leaves is removed first, so every output is written complete and only by a rename. A file
whose replica died `attempts` times is reported failed, and the batch goes on.

The backends (`cluster_ray.RayPool`, `cluster_local.ProcessPool`) only start replicas, send them tasks and report
what came back; this module owns the bookkeeping. No printing: callers report through `on_done`.
"""

from __future__ import annotations

import glob
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch._jobs import Job
from esrgan_cli.batch._journal import Journal
from esrgan_cli.batch.cluster.protocol import ClusterOptions, Pool, Ready, Result
from esrgan_cli.batch.cluster.worker import Record, ReplicaInfo, Task
from esrgan_cli.batch.runner import Outcome
from esrgan_cli.errors import ClusterError, EsrganError

if TYPE_CHECKING:
    from esrgan_cli.batch.cluster.worker import WorkerConfig
    from esrgan_cli.model.weights import LoadedWeights




@dataclass
class _Slot:
    ready: bool = False
    dead: bool = False
    info: ReplicaInfo | None = None
    inflight: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Journaling:
    """How the driver journals what replicas finish: the same entries as the local batch."""

    journal: Journal
    model_sha256: str
    pixels: dict[str, Any]


def remove_stale_temps(dst: Path) -> None:
    """Remove what an interrupted atomic write of `dst` left: `.NAME.XXXXXXXX.tmp` beside it."""
    for path in glob.glob(glob.escape(str(dst.parent / f".{dst.name}.")) + "*.tmp"):
        Path(path).unlink(missing_ok=True)


class Driver:
    """Start `workers` replicas in `pool`, learn their precision, then run a plan's jobs on them."""

    def __init__(self, pool: Pool, workers: int, options: ClusterOptions) -> None:
        self.pool = pool
        self.workers = workers
        self.options = options
        self.slots: dict[int, _Slot] = {}
        self.inflight: dict[int, tuple[int, Job, int]] = {}  # task id → (slot, job, deaths so far)
        self.first: ReplicaInfo | None = None
        self._ids = 0
        self._start_deaths = 0
        self.on_note: Callable[[str], None] = lambda message: None  # what the user should know (a replica died)
        for _ in range(workers):
            self.slots[pool.launch()] = _Slot()

    def first_ready(self) -> ReplicaInfo:
        """Wait for one replica to load the model: its device and precision decide the journal's pixel options."""
        while self.first is None:
            self._handle(self.pool.poll(0.5), lambda job, record: None)
        return self.first

    def run(self, todo: Sequence[Job], journaling: Journaling, on_done: Callable[[Outcome], None]) -> int:
        """Run every job; returns how many were never started because a full disk stopped the batch. Ctrl-C (or
        any exception) stops every replica, removes the temp files of files in flight, and re-raises."""
        jobs: Iterator[Job] = iter(todo)
        retry: deque[tuple[Job, int]] = deque()
        halted = [False]
        started = [0]

        def finish(job: Job, record: Record) -> None:
            outcome = _outcome(job, record, journaling)
            on_done(outcome)
            if outcome.stops_batch:
                halted[0] = True

        def next_job() -> tuple[Job, int] | None:
            if retry:
                return retry.popleft()
            job = next(jobs, None)
            if job is None:
                return None
            started[0] += 1
            return job, 0

        try:
            exhausted = False
            while True:
                if not halted[0] and not exhausted:
                    exhausted = self._fill(next_job)
                if not self.inflight and (halted[0] or (exhausted and not retry)):
                    break
                for job, deaths in self._handle(self.pool.poll(0.5), finish):
                    retry.append((job, deaths))
                    exhausted = False
        except BaseException:
            self.abort()
            raise
        return len(todo) - started[0]

    def abort(self) -> None:
        """Stop every replica, then remove what their writes in flight left behind."""
        try:
            self.pool.close()
        finally:
            for _, job, _ in self.inflight.values():
                remove_stale_temps(job.dst)

    def _fill(self, next_job: Callable[[], tuple[Job, int] | None]) -> bool:
        """Give every ready replica work up to `depth` files; True when no job is left to give."""
        for slot_id, slot in self.slots.items():
            while slot.ready and not slot.dead and len(slot.inflight) < self.options.depth:
                item = next_job()
                if item is None:
                    return True
                job, deaths = item
                self._ids += 1
                self.inflight[self._ids] = (slot_id, job, deaths)
                slot.inflight.add(self._ids)
                self.pool.send(slot_id, self._ids, Task.of(job))
        return False

    def _handle(self, events: list[Ready | Result],
                finish: Callable[[Job, Record], None]) -> list[tuple[Job, int]]:
        """Apply what the pool reported; returns the jobs to send again."""
        again: list[tuple[Job, int]] = []
        for event in events:
            if isinstance(event, Ready):
                self._ready(event)
                continue
            slot_id, job, deaths = self.inflight.pop(event.task)
            self.slots[slot_id].inflight.discard(event.task)
            if event.record is not None:
                finish(job, event.record)
                continue
            self._died(slot_id, event.died or "it died")
            remove_stale_temps(job.dst)
            if deaths + 1 >= self.options.attempts:
                finish(job, Record(job.key, error=EsrganError(
                    f"{job.src}: the worker processing it died {deaths + 1} times (last: {event.died})")))
            else:
                again.append((job, deaths + 1))
        for slot_id in [s for s, slot in self.slots.items() if slot.dead and not slot.inflight]:
            del self.slots[slot_id]  # a dead replica whose last files came back
        return again

    def _ready(self, event: Ready) -> None:
        slot = self.slots.get(event.slot)
        if slot is None or slot.dead:
            return
        if event.info is None:
            self._start_deaths += 1
            if self._start_deaths >= max(3, self.workers):
                raise ClusterError(f"replicas keep dying while they load the model (last: {event.died})")
            self._died(event.slot, event.died or "it died while starting")
            return
        if event.info.error is not None:
            raise event.info.error
        if self.first is None:
            self.first = event.info
        elif event.info.dtype != self.first.dtype:
            raise ClusterError(
                f"replicas run different precisions ({self.first.dtype} on {self.first.host}, {event.info.dtype} on "
                f"{event.info.host}), so their outputs would differ; choose one with --device or --precision")
        self._start_deaths = 0
        slot.ready, slot.info = True, event.info

    def _died(self, slot_id: int, reason: str) -> None:
        """A replica is gone: make sure of it, and start another in its place."""
        slot = self.slots[slot_id]
        if slot.dead:
            return
        slot.dead = True
        where = f" on {slot.info.host} (pid {slot.info.pid})" if slot.info else ""
        held = "; its files in flight go to another" if slot.ready else ""
        self.on_note(f"a worker died{where}: {reason}{held}")
        self.pool.kill(slot_id)
        self.slots[self.pool.launch()] = _Slot()


def _outcome(job: Job, record: Record, journaling: Journaling) -> Outcome:
    """A replica's record as the local batch's outcome, journaled if the output was written."""
    if record.error is not None:
        return Outcome.failed(job, record.error)
    try:
        journaling.journal.record(job, record.input_sha256, journaling.model_sha256, journaling.pixels,
                                  output_size=record.output_size)
    except EsrganError as e:
        return Outcome.failed(job, e)
    return Outcome(job, record.written)


def open_driver(options: ClusterOptions, weights: LoadedWeights, config: WorkerConfig) -> Driver:
    """Connect to the cluster (or start local processes) and start the replicas."""
    pool: Pool
    if options.address is not None:
        from esrgan_cli.batch.cluster._raypool import open_ray_pool

        pool, workers = open_ray_pool(options, weights, config)
    else:
        from esrgan_cli.batch.cluster.localpool import open_process_pool

        pool, workers = open_process_pool(options, weights, config)
    try:
        return Driver(pool, workers, options)
    except BaseException:
        pool.close()
        raise

