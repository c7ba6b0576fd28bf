"""`esrgan upscale PATH... -o OUTDIR`: a batch in this process, on this machine's GPUs, or on a Ray cluster.

All three share the planning, the journal, the skip rules, the `--report` JSON, the summary and the exit codes, so a
batch started one way can be finished another.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from esrgan_cli.cli.common import ProgressBar, debug_traceback, notes_line, say
from esrgan_cli.errors import EsrganError

if TYPE_CHECKING:
    from esrgan_cli.batch.cluster.driver import ClusterOptions
    from esrgan_cli.batch.journal import BatchOptions, BatchPlan, Job, Outcome
    from esrgan_cli.cli.upscale import Run


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


def upscale_many(paths: tuple[str, ...], outdir: Path, run: Run, batch: BatchOptions,
                 cluster: ClusterOptions | None) -> None:
    from esrgan_cli.batch.journal import collect_jobs
    from esrgan_cli.files import folder_lock

    if outdir.exists() and not outdir.is_dir():
        raise EsrganError(f"{outdir}: not a folder (with several inputs, -o names the output folder)")
    jobs, ignored = collect_jobs(paths, outdir, batch.recursive, batch.format, batch.suffix)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EsrganError(f"{outdir}: cannot create the output folder ({e.strerror or e})") from None
    with folder_lock(outdir):
        if cluster is None:
            _run_here(jobs, ignored, outdir, run, batch)
        else:
            _run_distributed(jobs, ignored, outdir, run, batch, cluster)


def _run_here(jobs: Sequence[Job], ignored: int, outdir: Path, run: Run, batch: BatchOptions) -> None:
    from esrgan_cli.batch.journal import Journal, pixel_options, plan_batch, run_batch
    from esrgan_cli.cli.upscale import load_upscaler
    from esrgan_cli.files import sha256_of
    from esrgan_cli.upscale.pipeline import batch_stages

    upscaler, source = load_upscaler(run)
    model_sha = sha256_of(upscaler.weights.path)
    pixels = pixel_options(dataclasses.asdict(run.options), run.quality,
                           str(upscaler.placement.dtype).removeprefix("torch."))
    journal = Journal(outdir)
    plan = plan_batch(jobs, ignored, batch, journal, model_sha, pixels)
    stages = batch_stages(upscaler, run.options, run.quality, journal, model_sha, pixels)

    def execute(on_done: Callable[[Outcome], None], note: Callable[[str], None]) -> None:
        stages.on_done = on_done
        run_batch(plan.todo, stages)

    _execute(plan, outdir, run, batch, (source, model_sha), execute)


def _run_distributed(jobs: Sequence[Job], ignored: int, outdir: Path, run: Run, batch: BatchOptions,
                     cluster: ClusterOptions) -> None:
    """The driver: replicas load the model the driver checked and sent them; the first to start tells the
    precision, which the journal's pixel options include."""
    from esrgan_cli.batch.cluster.driver import Journaling, open_driver
    from esrgan_cli.batch.cluster.worker import WorkerConfig
    from esrgan_cli.batch.journal import Journal, pixel_options, plan_batch
    from esrgan_cli.files import sha256_of
    from esrgan_cli.model.registry import load_registry, resolve_model
    from esrgan_cli.model.weights import load_weights

    registry = load_registry()
    source = run.model or registry.default
    weights = load_weights(resolve_model(source, registry).path)
    model_sha = sha256_of(weights.path)
    config = WorkerConfig(options=run.options, quality=run.quality, device=run.device, precision=run.precision)
    driver = open_driver(cluster, weights, config)
    del weights  # the replicas have their copy
    try:
        info = driver.first_ready()
        if info.note and not run.quiet:
            say(f"note: {info.note}")
        pixels = pixel_options(dataclasses.asdict(run.options), run.quality, info.dtype)
        journal = Journal(outdir)
        plan = plan_batch(jobs, ignored, batch, journal, model_sha, pixels)
        journal.entries.clear()  # planning is done: the driver only appends from here on
        journal.retain = False

        def execute(on_done: Callable[[Outcome], None], note: Callable[[str], None]) -> None:
            driver.on_note = note
            driver.run(plan.todo, Journaling(journal, model_sha, pixels), on_done)

        _execute(plan, outdir, run, batch, (source, model_sha), execute)
    finally:
        driver.pool.close()


def _execute(plan: BatchPlan, outdir: Path, run: Run, batch: BatchOptions, model: tuple[str, str],
             execute: Callable[[Callable[[Outcome], None], Callable[[str], None]], None]) -> None:
    """Run the plan with progress and per-file lines, then the report, the summary and the exit code."""
    from esrgan_cli.batch.journal import write_report

    if not run.quiet and (plan.skipped or plan.ignored):
        say(f"{len(plan.skipped)} already done (journal in {outdir}), {plan.ignored} non-image files ignored")
    tally = Tally(keep=batch.report is not None)
    todo = len(plan.todo)
    start = time.perf_counter()
    progress = ProgressBar(run.quiet, "images", files=todo)
    with progress as advance:

        def on_done(outcome: Outcome) -> None:
            tally.add(outcome)
            if outcome.error:
                debug_traceback(outcome.exception)
                progress.say(f"failed: {outcome.error}")
            elif not run.quiet and (line := notes_line(str(outcome.job.src), outcome.notes)):
                progress.say(line)
            if advance:
                advance(1, todo)

        def note(message: str) -> None:
            if not run.quiet:
                progress.say(f"note: {message}")

        execute(on_done, note)
    seconds = time.perf_counter() - start
    if batch.report is not None:
        write_report(batch.report, plan, tally.outcomes, model[0], model[1], seconds)
    if tally.stopped:
        say(f"stopped: {todo - tally.done - tally.failed} files not started; free space and run the same command "
            f"again to resume (the journal in {outdir} keeps what is done)")
    if not run.quiet or tally.failed:
        frames = f" ({tally.frames} frames or pages)" if tally.frames > tally.done else ""
        say(f"done {tally.done}{frames}, skipped {len(plan.skipped)}, failed {tally.failed} in {seconds:.1f} s "
            f"({tally.megapixels / seconds if seconds > 0 else 0:.3f} input Mpx/s)")
    if tally.failed:
        raise SystemExit(1)
