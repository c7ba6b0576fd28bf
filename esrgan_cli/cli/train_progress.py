"""What `esrgan train` shows while it runs: its setup steps, then a progress bar or lines; and Ctrl-C's handling."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from esrgan_cli.cli.common import say

if TYPE_CHECKING:
    from esrgan_cli.training.runtime import Report


class StopFlag:
    """Ctrl-C asks the trainer to stop after the current iteration (saving its state) instead of killing it."""

    def __init__(self, say_line: Callable[[str], None]) -> None:
        self.requested = False
        self._say = say_line
        self._previous: Any = None

    def is_set(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        self._say("stopping after this iteration (Ctrl-C again to abort without saving)")

    def __enter__(self) -> StopFlag:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class TrainProgress:
    """What a run shows on stderr: its setup steps as they start, then its progress (iterations, it/s, ETA, the
    latest loss): a live bar updated every iteration on a terminal, a line at the first iteration and every
    --log-every iterations otherwise (a log file). Validations, saves and warnings are lines either way."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = not quiet and sys.stderr.isatty()
        self.bar: Any = None
        self.task: Any = None
        self.total = self.done0 = self.log_every = 0
        self.t0 = 0.0
        self.loss = ""

    def setup(self, message: str) -> None:
        if not self.quiet:
            self.say(message)

    def start(self, done: int, total: int, log_every: int, device: str) -> None:
        """Training begins at iteration `done`: from here on, progress."""
        self.done0, self.total, self.log_every = done, total, log_every
        self.setup(f"training on {device}: iterations {done + 1} to {total}…" if done < total
                   else f"the run is at iteration {done} of {total} already")
        self.t0 = time.perf_counter()
        if self.live and done < total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[loss]}"),
                console=Console(stderr=True), transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=done, rate="", eta="", loss="")

    def _figures(self, iteration: int) -> tuple[str, str]:
        """it/s and ETA since training began."""
        elapsed = time.perf_counter() - self.t0
        rate = (iteration - self.done0) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - iteration) / rate) if rate > 0 else "?"
        return (f"{rate:.2f} it/s" if rate >= 0.1 else f"{1 / rate:.1f} s/it" if rate > 0 else ""), f"ETA {eta}"

    def report(self, r: Report) -> None:
        if r.kind == "warn":
            self.say(f"warning: {r.message}")
        elif self.quiet:
            return
        elif r.kind == "setup":
            self.say(r.message)
        elif r.kind == "tick":
            if "loss" in r.values:
                self.loss = f"loss {r.values['loss']:.4g}"
            if self.task is not None:
                rate, eta = self._figures(r.iteration)
                self.bar.update(self.task, completed=r.iteration, rate=rate, eta=eta, loss=self.loss)
            elif r.iteration == self.done0 + 1 and r.iteration % self.log_every and r.iteration != self.total:
                # the first iteration's line, unless a --log-every line follows at once
                self._line(r.iteration, self.loss)
        elif r.kind == "step":
            losses = " ".join(f"{k} {v:.4g}" for k, v in r.values.items() if k != "lr")
            if self.task is None:
                self._line(r.iteration, losses)
            elif not self.loss:  # a device whose every loss cannot be read at once: the mean of the last ones
                self.bar.update(self.task, loss=losses)
        elif r.kind == "val":
            v = r.values
            self.say(f"iteration {r.iteration}: validation PSNR {v['val_psnr']:.2f} dB "
                     f"(bicubic {v['val_psnr_bicubic']:.2f} dB), SSIM {v['val_ssim']:.4f}")
        elif r.kind == "save":
            self.say(f"iteration {r.iteration}: saved {r.message}")

    def _line(self, iteration: int, losses: str) -> None:
        rate, eta = self._figures(iteration)
        self.say(", ".join(part for part in (f"iteration {iteration}/{self.total}", rate, eta, losses) if part))

    def say(self, message: str) -> None:
        """A line that does not tear the live bar."""
        if self.bar is not None:
            self.bar.console.print(f"esrgan: {message}", markup=False, highlight=False)
        else:
            say(message)

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = self.task = None
