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
