"""What the driver and the pools (Ray's, or local processes) say to each other: the cluster's options, the
events a pool reports, and the pool's interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from esrgan_cli.batch.cluster.worker import Record, ReplicaInfo, Task


@dataclass(frozen=True)
class ClusterOptions:
    """Where the replicas run and how the driver feeds them. Pass by keyword."""

    address: str | None = None  # Ray: auto, local, HOST:PORT or ray://HOST:PORT; None: local processes
    workers: int | None = None  # replicas; None: one per GPU, else one per node (Ray) or one (local)
    depth: int = 2  # files in flight per replica: one running, one waiting
    attempts: int = 3  # a file whose replica died this many times is reported failed
    object_store_bytes: int | None = None  # Ray's object store for `address="local"`; None: Ray's default
    devices: tuple[str, ...] = ()  # local processes: one replica per device; () means one per CUDA GPU
    ray_logs: bool = False  # Ray's own messages (its log, worker output, worker deaths) on stderr; else none


@dataclass(frozen=True)
class Ready:
    """A replica finished starting (or died while starting: `info` None)."""

    slot: int
    info: ReplicaInfo | None
    died: str | None = None


@dataclass(frozen=True)
class Result:
    """A task came back: its record, or the reason its replica died."""

    slot: int
    task: int
    record: Record | None
    died: str | None = None


class Pool(Protocol):
    """A backend's replicas, each known by a slot number."""

    def launch(self) -> int: ...
    def send(self, slot: int, task_id: int, task: Task) -> None: ...
    def poll(self, timeout: float) -> list[Ready | Result]: ...
    def kill(self, slot: int) -> None: ...
    def close(self) -> None: ...
    def pid(self, slot: int) -> int: ...
