"""A whole batch as one library call: `upscale_files` is what `esrgan upscale DIR -o OUT` does, without printing.

It plans every output first (two inputs that would write one output are refused before any work), takes OUTDIR's
lock, skips what the journal says is done and still valid, runs the rest in this process (decode and encode on
threads beside the model) or on replicas (a Ray cluster, or one process per GPU here), journals each output as it
is written, and writes the `--report` JSON. What the caller should see arrives through `BatchEvents`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from esrgan_cli.batch._jobs import Job, list_jobs
from esrgan_cli.batch._journal import Journal, pixel_options
from esrgan_cli.batch._stages import batch_stages
from esrgan_cli.batch.plan import BatchOptions, BatchPlan, plan_batch
from esrgan_cli.batch.report import BatchSummary, Tally, write_report
from esrgan_cli.batch.runner import Outcome, run_batch
from esrgan_cli.errors import EsrganError
from esrgan_cli.files import folder_lock, sha256_of
from esrgan_cli.upscale.pipeline import UpscaleOptions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from esrgan_cli.batch._jobs import Ignored
    from esrgan_cli.batch.cluster.protocol import ClusterOptions
    from esrgan_cli.upscale.device import Precision

Execute = Callable[[Callable[[Outcome], None], Callable[[str], None]], None]
"""Runs a plan's jobs, reporting each outcome and each note through the two callbacks."""


class BatchEvents:
    """What a batch tells its caller as it goes; every method does nothing unless overridden."""

    def note(self, message: str) -> None:
        """Something the user should know that is about no one file: a changed precision, a replica that died."""

    def planned(self, plan: BatchPlan) -> None:
        """The plan is made: `plan.todo` will run; `plan.skipped` are done already; `plan.ignored` are the
        files of input folders it does not read (`path`, `reason`)."""

    def finished(self, outcome: Outcome) -> None:
        """One file is done or failed (`outcome.error`), with its notes."""


@dataclasses.dataclass(frozen=True)
class _Model:
    spec: str  # as the caller named it, or the registry's default: the report's "model"
    device: str
    precision: Precision


def upscale_files(
    inputs: Iterable[str | Path], outdir: str | Path, *, model: str | None = None, device: str = "auto",
    precision: Precision = "auto", options: UpscaleOptions | None = None, batch: BatchOptions | None = None,
    events: BatchEvents | None = None,
) -> BatchSummary:
    """Upscale files, folders and globs into the folder `outdir`, as `esrgan upscale PATH... -o OUTDIR` does.

    `model`: a registry name (None: the default), a weights file or `hf:OWNER/REPO/FILE`. `options` change the
    pixels (tiles, outscale, alpha, …); `batch` finds inputs and names outputs (recursive, format, suffix,
    overwrite, report, quality, cluster). A file that fails is counted in the summary and the batch goes on;
    a batch that cannot start raises an `EsrganError` with a one-line message."""
    from esrgan_cli.model.registry import load_registry

    options = options or UpscaleOptions()
    batch = batch or BatchOptions()
    events = events or BatchEvents()
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise EsrganError(f"{outdir}: not a folder (with several inputs, -o names the output folder)")
    jobs, ignored = list_jobs([str(i) for i in inputs], outdir, batch.recursive, batch.format, batch.suffix)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EsrganError(f"{outdir}: cannot create the output folder ({e.strerror or e})") from None
    chosen = _Model(model or load_registry().default, device, precision)
    with folder_lock(outdir):
        if batch.cluster is None:
            return _run_here(jobs, ignored, outdir, chosen, options, batch, events)
        return _run_distributed(jobs, ignored, outdir, chosen, options, batch, batch.cluster, events)


def _run_here(jobs: Sequence[Job], ignored: Sequence[Ignored], outdir: Path, model: _Model,
              options: UpscaleOptions, batch: BatchOptions, events: BatchEvents) -> BatchSummary:
    from esrgan_cli.api import load_model

    upscaler = load_model(model.spec, model.device, model.precision, strength=options.strength)
    if upscaler.placement.note:
        events.note(upscaler.placement.note)
    model_sha = sha256_of(upscaler.weights.path)
    pixels = pixel_options(dataclasses.asdict(options), batch.quality,
                           str(upscaler.placement.dtype).removeprefix("torch."))
    journal = Journal(outdir)
    plan = plan_batch(jobs, ignored, batch, journal, model_sha, pixels)
    stages = batch_stages(upscaler, options, batch.quality, journal, model_sha, pixels)

    def execute(on_done: Callable[[Outcome], None], note: Callable[[str], None]) -> None:
        run_batch(plan.todo, dataclasses.replace(stages, on_done=on_done))

    return _execute(plan, outdir, batch, (model.spec, model_sha), execute, events)


def _run_distributed(jobs: Sequence[Job], ignored: Sequence[Ignored], outdir: Path, model: _Model,
                     options: UpscaleOptions, batch: BatchOptions, cluster: ClusterOptions,
                     events: BatchEvents) -> BatchSummary:
    """The driver: replicas load the model the driver checked and sent them; the first to start tells the
    precision, which the journal's pixel options include."""
    from esrgan_cli.batch.cluster.driver import Journaling, open_driver
    from esrgan_cli.batch.cluster.worker import WorkerConfig
    from esrgan_cli.model.registry import load_named

    weights = load_named(model.spec, strength=options.strength)
    model_sha = sha256_of(weights.path)
    config = WorkerConfig(options=options, quality=batch.quality, device=model.device, precision=model.precision)
    driver = open_driver(cluster, weights, config)
    del weights  # the replicas have their copy
    try:
        info = driver.first_ready()
        if info.note:
            events.note(info.note)
        pixels = pixel_options(dataclasses.asdict(options), batch.quality, info.dtype)
        journal = Journal(outdir)
        plan = plan_batch(jobs, ignored, batch, journal, model_sha, pixels)
        journal.append_only()

        def execute(on_done: Callable[[Outcome], None], note: Callable[[str], None]) -> None:
            driver.on_note = note
            driver.run(plan.todo, Journaling(journal, model_sha, pixels), on_done)

        return _execute(plan, outdir, batch, (model.spec, model_sha), execute, events)
    finally:
        driver.pool.close()


def _execute(plan: BatchPlan, outdir: Path, batch: BatchOptions, model: tuple[str, str], execute: Execute,
             events: BatchEvents) -> BatchSummary:
    """Run the plan, tallying each outcome; then the report and the summary."""
    events.planned(plan)
    tally = Tally(keep=batch.report is not None)
    start = time.perf_counter()

    def on_done(outcome: Outcome) -> None:
        tally.add(outcome)
        events.finished(outcome)

    execute(on_done, events.note)
    seconds = time.perf_counter() - start
    if batch.report is not None:
        write_report(batch.report, plan, tally.outcomes, model[0], model[1], seconds)
    todo = len(plan.todo)
    return BatchSummary(done=tally.done, skipped=len(plan.skipped), failed=tally.failed, ignored=len(plan.ignored),
                        stopped=tally.stopped, not_started=todo - tally.done - tally.failed, frames=tally.frames,
                        megapixels=tally.megapixels, seconds=seconds, outdir=outdir)
