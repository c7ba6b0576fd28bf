"""What surrounds a training run: its error type, what it reports, and the processes it runs in (torchrun)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

# setup: a step of building the run, as it starts (message); tick: an iteration done, with the loss of the latest
# iteration that could be read without waiting for the device (values["loss"], absent when none could);
# step: the mean loss terms of the last --log-every iterations; val, save, warn: as they say.
ReportKind = Literal["setup", "tick", "step", "val", "save", "warn"]


@dataclass(frozen=True)
class Report:
    """Something the user may want to see; the CLI decides how."""

    kind: ReportKind
    iteration: int
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""


Reporter = Callable[[Report], None]


class LatestLoss:
    """The loss of the latest iteration that can be read without waiting for the device, for a progress display that
    updates every iteration. On the CPU that is the iteration just done. On CUDA each loss is copied to the host
    asynchronously and read once the copy is seen done, a few iterations late, so the device is never waited for;
    on other devices there is none between log lines."""

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self.value: float | None = None

    def push(self, loss: torch.Tensor) -> float | None:
        if loss.device.type == "cpu":
            self.value = float(loss)
        elif loss.device.type == "cuda":
            if self._pending is not None and self._pending[1].query():
                self.value = float(self._pending[0])
                self._pending = None
            if self._pending is None:
                host = loss.to("cpu", non_blocking=True)  # into pinned memory, queued behind the step
                done = torch.cuda.Event()
                done.record()
                self._pending = (host, done)
        return self.value


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """torchrun's environment, or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over processes (in place)."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(ctx: Distributed, device: torch.device) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo on CPU."""
    if ctx.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
