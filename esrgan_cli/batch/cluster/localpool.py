"""The local backend of a distributed batch: one process per GPU of this machine, without Ray.

Each replica is a spawned process with its own pair of pipes: tasks in, records out. Per-process pipes mean a process
killed mid-message can only garble its own channel, which the driver drops with it. A process that dies is noticed
by its sentinel; records it sent before dying are read first, and only the files still missing are sent again.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import traceback
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch.cluster.protocol import ClusterOptions, Ready, Result
from esrgan_cli.batch.cluster.worker import Replica, Task, WorkerConfig

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from esrgan_cli.model.weights import LoadedWeights


def local_gpus(device: str) -> list[str]:
    """This machine's CUDA devices, when `--device` lets the batch choose among them."""
    if device not in ("auto", "cuda"):
        return []
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _serve(weights: LoadedWeights, config: WorkerConfig, tasks: Connection, records: Connection) -> None:
    """A replica process: load the model, then upscale what arrives, two files at a time (the model one at a time)
    so reading and writing overlap with the model."""
    from concurrent.futures import ThreadPoolExecutor

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops this process
    replica = Replica()
    info = replica.start(weights, config)
    records.send((None, info))
    if info.error is not None:
        return
    lock = threading.Lock()

    def one(task_id: int, task: Task) -> None:
        try:
            message: Any = (task_id, replica.run(task))
        except BaseException:
            message = (task_id, "".join(traceback.format_exc()))
        with lock:
            records.send(message)

    with ThreadPoolExecutor(2) as threads:
        while (message := tasks.recv()) is not None:
            threads.submit(one, *message)


@dataclasses.dataclass
class _Process:
    process: BaseProcess
    tasks: Connection
    records: Connection
    device: str
    pending: set[int] = dataclasses.field(default_factory=set)
    started: bool = False
    reported: bool = False


class ProcessPool:
    """Replicas as local processes, one device each."""

    def __init__(self, weights: LoadedWeights, config: WorkerConfig, devices: tuple[str, ...]) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._weights = weights
        self._config = config
        self._devices = devices
        self._procs: dict[int, _Process] = {}
        self._next = 0

    def launch(self) -> int:
        busy = [p.device for p in self._procs.values() if p.process.is_alive()]
        device = min(self._devices, key=lambda d: (busy.count(d), self._devices.index(d)))
        tasks_out, tasks_in = self._context.Pipe(duplex=False)
        records_out, records_in = self._context.Pipe(duplex=False)
        config = dataclasses.replace(self._config, device=device)
        process = self._context.Process(target=_serve, args=(self._weights, config, tasks_out, records_in),
                                        daemon=True, name=f"esrgan-replica-{device}")
        process.start()
        tasks_out.close()
        records_in.close()
        self._next += 1
        self._procs[self._next] = _Process(process, tasks_in, records_out, device)
        return self._next

    def send(self, slot: int, task_id: int, task: Task) -> None:
        proc = self._procs[slot]
        proc.pending.add(task_id)
        try:
            proc.tasks.send((task_id, task))
        except OSError:
            pass  # it died: its sentinel says so at the next poll, and this task comes back as lost

    def pid(self, slot: int) -> int:
        return int(self._procs[slot].process.pid or 0)

    def poll(self, timeout: float) -> list[Ready | Result]:
        live = [p for p in self._procs.values() if not p.reported]
        if not live:
            return []
        wait([p.records for p in live] + [p.process.sentinel for p in live], timeout)
        events: list[Ready | Result] = []
        for slot, proc in self._procs.items():
            if proc.reported:
                continue
            dead = not proc.process.is_alive()  # before reading: what it sent before dying is read below
            events += self._read(slot, proc)
            if dead:
                events += self._lost(slot, proc, f"its process ended (exit code {proc.process.exitcode})")
        return events

    def _read(self, slot: int, proc: _Process) -> list[Ready | Result]:
        events: list[Ready | Result] = []
        try:
            while proc.records.poll():
                task_id, payload = proc.records.recv()
                if task_id is None:
                    proc.started = True
                    events.append(Ready(slot, payload))
                elif isinstance(payload, str):
                    raise RuntimeError(f"a replica on {proc.device} failed:\n{payload}")
                else:
                    proc.pending.discard(task_id)
                    events.append(Result(slot, task_id, payload))
        except (EOFError, OSError):
            pass  # a channel cut mid-message: the process is gone, and what it did not report is lost
        return events

    def _lost(self, slot: int, proc: _Process, reason: str) -> list[Ready | Result]:
        proc.reported = True
        lost: list[Ready | Result] = [Result(slot, t, None, reason) for t in sorted(proc.pending)]
        proc.pending.clear()
        return lost if proc.started else [Ready(slot, None, reason), *lost]

    def kill(self, slot: int) -> None:
        proc = self._procs.get(slot)
        if proc is not None and proc.process.is_alive():
            proc.process.kill()
            proc.process.join(60)

    def close(self) -> None:
        for slot, proc in list(self._procs.items()):
            self.kill(slot)
            proc.tasks.close()
            proc.records.close()
            del self._procs[slot]


def open_process_pool(options: ClusterOptions, weights: LoadedWeights,
                      config: WorkerConfig) -> tuple[ProcessPool, int]:
    """One replica per device in `options.devices` (default: every CUDA GPU here)."""
    devices = options.devices or tuple(local_gpus(config.device)) or ("cpu",)
    workers = options.workers or len(devices)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // workers) if any(d == "cpu" for d in devices) else 0
    return ProcessPool(weights, dataclasses.replace(config, threads=config.threads or threads), devices), workers
