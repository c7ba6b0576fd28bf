"""What every command shares: the one-line message format, option types, and the progress bar on stderr."""

from __future__ import annotations

import re
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from esrgan_cli.defaults import MIN_TILE

if TYPE_CHECKING:
    from esrgan_cli.model.hub import Download
    from esrgan_cli.upscale.device import Precision
    from esrgan_cli.upscale.pipeline import UpscaleOptions


@dataclass
class Settings:
    """What the `esrgan` group's options set for every command."""

    debug: bool = False  # --debug / ESRGAN_DEBUG: full tracebacks under errors


SETTINGS = Settings()


def say(message: str) -> None:
    click.echo(f"esrgan: {message}", err=True)


def announce_download(event: Download) -> None:
    """Said before the network is touched, so a slow or failing download is never a silent wait."""
    size = event.file.size
    mb = "" if size is None else f" ({size / 1e6:.1f} MB)"
    say(f"{event.label}: downloading {event.file.where()}{mb} from {event.endpoint}")


def debug_traceback(e: BaseException | None) -> None:
    """Under --debug, the full traceback of an expected failure (with what caused it) on stderr."""
    if SETTINGS.debug and e is not None:
        click.echo("".join(traceback.format_exception(e)).rstrip(), err=True)


def notes_line(label: str, notes: tuple[str, ...] | list[str]) -> str | None:
    """All notes about one file as one line, or None."""
    distinct = list(dict.fromkeys(notes))
    return f"note: {label}: " + "; ".join(distinct) if distinct else None


class DeviceParam(click.ParamType):
    """auto, cpu, mps, cuda or cuda:N. A name of another form is a usage error (exit 2); a device of the right form
    that this machine lacks is found later, when the model is placed (one line, exit 1)."""

    name = "auto|cpu|cuda|cuda:N|mps"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text) is None:
            self.fail(f"unknown device {value!r} (use auto, cpu, cuda, cuda:N or mps)", param, ctx)
        return text


class TileParam(click.ParamType):
    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and value.lower() == "auto"):
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not 'auto' or a whole number", param, ctx)
        if n != 0 and n < MIN_TILE:
            self.fail(f"{n} is too small: use 0 (whole image), auto, or at least {MIN_TILE}", param, ctx)
        return n


class ProgressBar:
    """A rich progress bar over input pixels (or files) on stderr; nothing when quiet or not a terminal."""

    def __init__(self, quiet: bool, label: str, files: int | None = None) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.files = files  # a count of files, or None for a bar over pixels
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        count = MofNCompleteColumn() if self.files is not None else TaskProgressColumn()
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=self.files)
        return self.advance

    def say(self, message: str) -> None:
        """A message that does not tear the live bar."""
        if self.bar is not None:
            self.bar.console.print(f"esrgan: {message}", markup=False, highlight=False)
        else:
            say(message)

    def advance(self, n: int, total: int) -> None:
        self.bar.update(self.task, advance=n, total=total)

    def describe(self, label: str) -> None:
        """A new label for the bar (e.g. which frame of an animation is being upscaled)."""
        if self.bar is not None:
            self.bar.update(self.task, description=label)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataclass(frozen=True)
class Run:
    """The options every upscale shares, single file or batch."""

    model: str | None
    device: str
    precision: Precision
    options: UpscaleOptions
    quality: int
    quiet: bool
    verbose: bool = False  # a batch names the files it does not read


def check_twin(model: str | None) -> None:
    """--strength needs a registry model with a faithful twin: a usage error (one line, exit 2) before any input is
    read or any weights are loaded."""
    from esrgan_cli.model.registry import load_registry, twin_of

    registry = load_registry()
    if twin_of(model, registry) is None:
        raise _OneLineUsageError(
            f"--strength needs a model with a faithful twin; {model or registry.default} has none")


class _OneLineUsageError(click.UsageError):
    """A usage error (exit 2) that is one line, `esrgan: error: ...`, without click's usage banner."""

    def show(self, file: Any = None) -> None:
        say(f"error: {self.format_message()}")
