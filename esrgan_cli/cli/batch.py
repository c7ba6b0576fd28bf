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

    def __init__(self, quiet: bool, outdir: Path, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.outdir = outdir
        self.progress: ProgressBar | None = None
        self.advance: Any = None
        self.todo = 0

    def note(self, message: str) -> None:
        if not self.quiet:
            self._say(f"note: {message}")

    def planned(self, plan: BatchPlan) -> None:
        if not self.quiet:
            said = []
            if plan.skipped:
                said.append(f"{len(plan.skipped)} already done (journal in {self.outdir})")
            if plan.ignored:
                n = len(plan.ignored)
                detail = ":" if self.verbose else " (-v names them)"
                said.append(f"{n} {'file' if n == 1 else 'files'} in the input folders not read{detail}")
            if said:
                say(", ".join(said))
            if self.verbose:
                for ignored in plan.ignored:
                    say(f"  not read: {ignored.path} ({ignored.reason})")
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

    printer = _Printer(run.quiet, outdir, run.verbose)
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
        # A rate says something once a second's work or a megapixel has gone by; "0.004 Mpx/s" for a few icons
        # does not.
        rate = (f", {summary.megapixels / seconds:.2f} input Mpx/s"
                if seconds >= 1 and summary.megapixels >= 1 else "")
        say(f"done {summary.done}{frames}, skipped {summary.skipped}, failed {summary.failed} in {seconds:.1f} s "
            f"(into {outdir}{rate})")
    if summary.failed:
        raise SystemExit(1)
