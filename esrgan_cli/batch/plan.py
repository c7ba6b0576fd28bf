"""What a batch will do: its options, and its jobs split into those to run and those the journal says are done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch._jobs import Ignored, Job, JobList
from esrgan_cli.batch._journal import Journal
from esrgan_cli.defaults import DEFAULT_QUALITY

if TYPE_CHECKING:
    from esrgan_cli.batch.cluster.protocol import ClusterOptions


@dataclass(frozen=True)
class BatchOptions:
    """How a batch finds its inputs and names its outputs. Pass by keyword."""

    recursive: bool = False
    format: str | None = None  # png, jpg, webp, tiff; None keeps each input's
    suffix: str = ""
    overwrite: bool = False  # redo outputs the journal says are done
    report: str | Path | None = None  # JSON report of done, skipped and failed files
    quality: int = DEFAULT_QUALITY  # JPEG and WebP outputs
    cluster: ClusterOptions | None = None  # replicas on a Ray cluster or this machine's GPUs; None: this process


@dataclass(frozen=True)
class BatchPlan:
    todo: Sequence[Job]
    skipped: Sequence[Job]  # done and still valid, per the journal
    ignored: Sequence[Ignored]  # files of input folders not read, each with why


def plan_batch(
    jobs: Sequence[Job], ignored: Sequence[Ignored], options: BatchOptions, journal: Journal, model_sha256: str,
    pixels: dict[str, Any],
) -> BatchPlan:
    """The jobs of `list_jobs`, split into what to do and what the journal says is done (unless `overwrite`).
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
