"""`esrgan upscale PATH... -o OUTDIR`: the library's `upscale_files` with a progress bar, per-file lines and the
summary on stderr, and the exit code (1 if any file failed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch.run import BatchEvents
from esrgan_cli.cli.common import ProgressBar, debug_traceback, notes_line, say

if TYPE_CHECKING:
    from esrgan_cli.batch.plan import BatchOptions, BatchPlan
    from esrgan_cli.batch.runner import Outcome
    from esrgan_cli.cli.common import Run


class _Printer(BatchEvents):
    """Per-file lines and notes on stderr, beside a progress bar over the files to do."""

    def __init__(self, quiet: bool, outdir: Path) -> None:
        self.quiet = quiet
        self.outdir = outdir
        self.progress: ProgressBar | None = None
        self.advance: Any = None
        self.todo = 0

    def note(self, message: str) -> None:
        if not self.quiet:
            self._say(f"note: {message}")

    def planned(self, plan: BatchPlan) -> None:
        if not self.quiet and (plan.skipped or plan.ignored):
            say(f"{len(plan.skipped)} already done (journal in {self.outdir}), {plan.ignored} non-image files ignored")
        self.todo = len(plan.todo)
        self.progress = ProgressBar(self.quiet, "images", files=self.todo)
        self.advance = self.progress.__enter__()

    def finished(self, outcome: Outcome) -> None:
        if outcome.error:
            debug_traceback(outcome.exception)
            self._say(f"failed: {outcome.error}")
        elif not self.quiet and (line := notes_line(str(outcome.job.src), outcome.notes)):
            self._say(line)
        if self.advance:
            self.advance(1, self.todo)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.say(message)
        else:
            say(message)


def upscale_many(paths: tuple[str, ...], outdir: Path, run: Run, batch: BatchOptions) -> None:
    from esrgan_cli.batch.run import upscale_files

    printer = _Printer(run.quiet, outdir)
    try:
        summary = upscale_files(paths, outdir, model=run.model, device=run.device, precision=run.precision,
                                options=run.options, batch=batch, events=printer)
    finally:
        printer.close()
    if summary.stopped:
        say(f"stopped: {summary.not_started} files not started; free space and run the same command again to "
            f"resume (the journal in {outdir} keeps what is done)")
    if not run.quiet or summary.failed:
        frames = f" ({summary.frames} frames or pages)" if summary.frames > summary.done else ""
        seconds = summary.seconds
        say(f"done {summary.done}{frames}, skipped {summary.skipped}, failed {summary.failed} in {seconds:.1f} s "
            f"({summary.megapixels / seconds if seconds > 0 else 0:.3f} input Mpx/s)")
    if summary.failed:
        raise SystemExit(1)
