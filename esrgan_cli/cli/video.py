"""`esrgan upscale CLIP -o OUT.mp4`: the video options, their help, the progress bar and the summary line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from esrgan_cli.cli.common import Run, notes_line, say
from esrgan_cli.defaults import VIDEO_CODECS, VIDEO_INSTALL_HINT, VIDEO_OUTPUT_SUFFIXES, VIDEO_SUFFIXES
from esrgan_cli.errors import EsrganError, naming

if TYPE_CHECKING:
    from esrgan_cli.upscale.upscaler import Upscaler
    from esrgan_cli.video.codecs import VideoEncoding
    from esrgan_cli.video.pipeline import VideoProgress


class CodecOption(click.Option):
    """--codec, whose help says which codecs the installed PyAV writes: asked only when the help is shown, so
    `esrgan --help` never imports PyAV."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        from esrgan_cli.video.codecs import available_codecs

        have = available_codecs()
        there = f"this PyAV writes {', '.join(have)}" if have else f"PyAV is not installed: {VIDEO_INSTALL_HINT}"
        return record[0], f"{record[1]} ({there})"


def video_options(f: Any) -> Any:
    """The encoding options of `esrgan upscale`, for video outputs."""
    f = click.option("--pix-fmt", default=None, metavar="FMT",
                     help="Video: pixel format of the output, e.g. yuv420p, yuv444p, yuv420p10le. Default: yuv420p "
                          "(what every player shows), yuv420p10le for a source above 8 bits where the codec has it; "
                          "yuv444p for ffv1.")(f)
    f = click.option("--preset", default=None, metavar="NAME",
                     help="Video: the encoder's speed/size trade-off: x264/x265 ultrafast..veryslow (default medium), "
                          "SVT-AV1 0-13 (default 8), VP9 cpu-used 0-8 (default 2).")(f)
    f = click.option("--crf", type=click.IntRange(0, 63), default=None, metavar="N",
                     help="Video: constant quality, lower is better and larger. Default: h264 18, hevc 22, vp9 24, "
                          "av1 28 (about visually lossless each); ffv1 is lossless and takes none.")(f)
    f = click.option("--codec", type=click.Choice(list(VIDEO_CODECS)), default=None, cls=CodecOption,
                     help="Video: codec of the output. Default: h264 (vp9 for .webm).")(f)
    return f


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def check_pairing(src: Path, dst: Path, encoding: VideoEncoding) -> bool:
    """Whether this is a video job; a video into an image file (or the other way) is a usage error, and so are
    video options for an image."""
    video_in, video_out = is_video(src), dst.suffix.lower() in VIDEO_OUTPUT_SUFFIXES
    if video_in and not video_out:
        raise click.BadParameter(f"{src.name} is a video: -o names a video file "
                                 f"({', '.join(s[1:] for s in VIDEO_OUTPUT_SUFFIXES)})", param_hint="'-o'")
    if video_out and not video_in:
        raise click.BadParameter(f"{dst.name} is a video file, and {src.name} is not a video "
                                 f"({', '.join(sorted(s[1:] for s in VIDEO_SUFFIXES))})", param_hint="'-o'")
    if not video_in and any(v is not None for v in (encoding.codec, encoding.crf, encoding.preset, encoding.pix_fmt)):
        raise click.UsageError("--codec, --crf, --preset and --pix-fmt are for video outputs")
    return video_in


class VideoBar:
    """Frames done of the total (or the time position when the count is unknown), fps and ETA, on stderr when it
    is a terminal; nothing otherwise."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> VideoBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[where]}"),
                                TextColumn("{task.fields[fps]}"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None, where="", fps="")
        return self

    def update(self, p: VideoProgress) -> None:
        if self.bar is None:
            return
        fps = f"{p.frames / p.seconds:.1f} fps" if p.seconds > 0 else ""
        if p.total:
            self.bar.update(self.task, completed=p.frames, total=p.total, where=f"{p.frames}/{p.total} frames", fps=fps)
        else:
            where = f"{_clock(p.position)}" + (f"/{_clock(p.duration)}" if p.duration else "")
            self.bar.update(self.task, completed=p.position, total=p.duration, where=f"{where} ({p.frames} frames)",
                            fps=fps)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _clock(seconds: float) -> str:
    minutes, s = divmod(max(0.0, seconds), 60)
    h, m = divmod(int(minutes), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


def upscale_one_video(src: Path, dst: Path, run: Run, encoding: VideoEncoding,
                      load_upscaler: Callable[[Run], tuple[Upscaler, str]]) -> None:
    """One video into -o FILE: the checks that need no model first (PyAV, the input, the encoding), then the job."""
    from esrgan_cli.files import check_output
    from esrgan_cli.video.codecs import import_av, plan_encoding
    from esrgan_cli.video.pipeline import upscale_video
    from esrgan_cli.video.probe import probe

    import_av()
    info = probe(src)
    check_output(src, dst)
    plan_encoding(dst, encoding, info.bits)
    upscaler, source = load_upscaler(run)
    with VideoBar(run.quiet, src.name) as bar:
        try:
            result = upscale_video(src, dst, upscaler, options=run.options, encoding=encoding, progress=bar.update)
        except EsrganError as e:
            raise naming(src, e) from e
    if not run.quiet:
        if line := notes_line(str(src), result.notes):
            say(line)
        placement = upscaler.placement
        fps = result.frames / result.seconds if result.seconds > 0 else 0.0
        say(f"wrote {dst} ({result.frames} frames of {result.width}×{result.height}, {result.codec} {result.pix_fmt}, "
            f"model {source}, {placement.device.type} {str(placement.dtype).removeprefix('torch.')}, "
            f"{result.seconds:.1f} s, {fps:.1f} fps)")
