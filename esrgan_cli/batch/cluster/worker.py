"""The worker side of a distributed batch: one model replica that upscales the files it is sent.

A `Replica` runs inside a Ray actor or a local worker process. It loads the model once, then for each `Task` reads
the input from storage every node sees, upscales it with the same stages as the local batch
(`pipeline.batch_stages`, without a journal), writes the output atomically (a temp file in the output's folder,
then a rename), and answers with a `Record`: a few hundred bytes, never pixels. The driver journals the record.
Nothing here imports Ray.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch._jobs import Job
from esrgan_cli.batch.runner import Written
from esrgan_cli.errors import EsrganError, ImageReadError

if TYPE_CHECKING:
    from esrgan_cli.batch.runner import Stages
    from esrgan_cli.model.weights import LoadedWeights
    from esrgan_cli.upscale.pipeline import UpscaleOptions


@dataclass(frozen=True)
class WorkerConfig:
    """What every replica of one batch shares. Pass by keyword."""

    options: UpscaleOptions
    quality: int
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0  # torch CPU threads for this replica; 0: an even share of the node's CPUs


@dataclass(frozen=True)
class Task:
    """One file to upscale: where to read, where to write, and the journal's name for the output."""

    src: str
    dst: str
    key: str

    @classmethod
    def of(cls, job: Job) -> Task:
        return cls(str(job.src), str(job.dst), job.key)


@dataclass(frozen=True)
class Record:
    """What a replica reports for one task; `error` set means the file failed (and nothing was written)."""

    key: str
    input_sha256: str = ""
    output_size: int = 0
    written: Written | None = None
    error: EsrganError | None = None


@dataclass(frozen=True)
class ReplicaInfo:
    """Where a replica runs, or why it could not start."""

    pid: int
    host: str
    device: str = ""
    dtype: str = ""  # the precision the model runs in: part of the journal's pixel options
    note: str | None = None  # why the device or precision differs from the request
    error: EsrganError | None = None


class Replica:
    """A model on one device, upscaling tasks. Two tasks may run at once (decode and encode of one beside the
    model of the other); the model itself runs one at a time."""

    def __init__(self) -> None:
        self._stages: Stages[Any, Any] | None = None
        self._model_lock = threading.Lock()

    def start(self, weights: LoadedWeights, config: WorkerConfig) -> ReplicaInfo:
        """Load the model; an expected failure (no such device) is reported, not raised."""
        try:
            import torch

            from esrgan_cli.batch._stages import batch_stages
            from esrgan_cli.upscale.device import choose_placement
            from esrgan_cli.upscale.upscaler import Upscaler

            if config.threads > 0:
                torch.set_num_threads(config.threads)
            upscaler = Upscaler(weights, choose_placement(config.device, config.precision))
        except EsrganError as e:
            return ReplicaInfo(os.getpid(), socket.gethostname(), error=e)
        self._stages = batch_stages(upscaler, config.options, config.quality)
        placement = upscaler.placement
        return ReplicaInfo(os.getpid(), socket.gethostname(), str(placement.device),
                           str(placement.dtype).removeprefix("torch."), placement.note)

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: Task) -> Record:
        """Upscale one file. An expected failure becomes the record's error; anything else is a bug and raises."""
        from esrgan_cli.files import sha256_of

        stages = self._stages
        if stages is None:
            raise RuntimeError("Replica.run before Replica.start")
        job = Job(Path(task.src), Path(task.dst), task.key)
        try:
            data = stages.decode(job)
            try:
                sha = sha256_of(job.src)
            except OSError as e:
                raise ImageReadError(f"{job.src}: cannot read ({e.strerror or e})") from None
            with self._model_lock:
                result = stages.compute(job, data)
            written = stages.encode(job, data, result)
            size = job.dst.stat().st_size
        except EsrganError as e:
            return Record(task.key, error=e)
        except OSError as e:  # the output vanished between its rename and the stat: report, do not journal
            return Record(task.key, error=EsrganError(f"{job.dst}: cannot check the written output ({e})"))
        return Record(task.key, sha, size, written)
