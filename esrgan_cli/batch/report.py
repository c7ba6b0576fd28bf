"""What a batch did: the tally behind the summary line, and the `--report` JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from esrgan_cli.batch.plan import BatchPlan
from esrgan_cli.batch.runner import Outcome
from esrgan_cli.files import atomic_write


def write_report(path: str | Path, plan: BatchPlan, outcomes: Sequence[Outcome], model: str, model_sha256: str,
                 seconds: float) -> None:
    """The `--report` JSON: done, skipped and failed files, the model, and the throughput."""
    done = [o for o in outcomes if not o.error]
    mpx = sum(o.megapixels for o in done)
    data = {
        "model": model, "model_sha256": model_sha256, "seconds": round(seconds, 3),
        "input_megapixels_per_second": round(mpx / seconds, 4) if seconds > 0 else None,
        "done": [{"input": str(o.job.src), "output": str(o.job.dst)} for o in done],
        "skipped": [{"input": str(j.src), "output": str(j.dst)} for j in plan.skipped],
        "failed": [{"input": str(o.job.src), "output": str(o.job.dst), "error": o.error}
                   for o in outcomes if o.error],
        "ignored": [{"input": i.path, "reason": i.reason} for i in plan.ignored],
    }
    with atomic_write(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@dataclass
class Tally:
    """What the summary and the report need; outcomes are kept only for a report, so memory stays flat."""

    keep: bool
    done: int = 0
    failed: int = 0
    megapixels: float = 0.0
    frames: int = 0  # frames or pages written: more than `done` when there were animations
    stopped: bool = False
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if outcome.error:
            self.failed += 1
        else:
            self.done += 1
            self.megapixels += outcome.megapixels
            self.frames += outcome.frames
        self.stopped = self.stopped or outcome.stops_batch
        if self.keep:
            self.outcomes.append(outcome)


@dataclass(frozen=True)
class BatchSummary:
    """What `upscale_files` did, for the summary line and the exit code."""

    done: int
    skipped: int
    failed: int
    ignored: int  # files of input folders not read (no image extension, a symlinked folder, a FIFO)
    stopped: bool  # a full disk stopped the batch: free space and make the same call again to resume
    not_started: int  # files it kept from starting
    frames: int  # frames or pages written
    megapixels: float  # input megapixels of what was done
    seconds: float
    outdir: Path
