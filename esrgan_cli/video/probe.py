"""What a video input holds, read before any work: its picture stream, size, depth, frame count, colour description
and rotation. A file FFmpeg cannot read as video (no video stream, truncated, an unknown codec, not a video) is one
line, a VideoReadError."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from esrgan_cli.errors import VideoReadError, first_line
from esrgan_cli.video.codecs import import_av

# FFmpeg's AVColorSpace (the matrix) → swscale's name for the same conversion.
_SWS_MATRIX = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_BT709, _SMPTE170M, _UNSPECIFIED = 1, 6, 2
_MPEG_RANGE, _JPEG_RANGE = 1, 2


@dataclass(frozen=True)
class Colour:
    """The colour description a stream carries (FFmpeg's enum values), as it is written to the output."""

    primaries: int
    transfer: int
    matrix: int
    range: int
    guessed: str | None = None  # what was assumed for a description the source leaves out, for a note

    @property
    def sws_matrix(self) -> str:
        return _SWS_MATRIX.get(self.matrix, "itu601")


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    stream_index: int
    codec: str
    width: int
    height: int
    pix_fmt: str
    bits: int
    frames: int | None  # what the container says, None when it does not tell
    duration: float | None  # seconds
    rate: Fraction | None  # average frames per second, None when unknown
    time_base: Fraction
    rotation: int  # degrees counter-clockwise, from the display matrix
    colour: Colour
    other_streams: tuple[str, ...]  # "audio aac", "subtitle subrip", ...


def probe(path: Path) -> VideoInfo:
    """Open `path`, find its first video stream and decode one frame; anything wrong is one VideoReadError line."""
    av = import_av()
    path = Path(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise VideoReadError(f"{path}: cannot read ({e.strerror or first_line(e)})") from None
    if os.path.isdir(path):
        raise VideoReadError(f"{path}: is a folder")
    if size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise VideoReadError(f"{path}: not a video FFmpeg can read ({_reason(e)})") from None
    with container:
        videos = [s for s in container.streams.video if not _is_cover(s)]
        if not videos:
            kinds = ", ".join(f"{s.type} {_codec_name(s)}" for s in container.streams) or "no streams"
            raise VideoReadError(f"{path}: no video stream (it holds {kinds})")
        stream = videos[0]
        if stream.codec_context is None:
            raise VideoReadError(f"{path}: video codec {_codec_name(stream)!r} has no decoder in this PyAV")
        first = _first_frame(container, stream, path)
        ctx = stream.codec_context
        pix_fmt = first.format.name
        bits = max(int(c.bits) for c in first.format.components)
        frames = int(stream.frames) or None
        duration = _duration(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        others = tuple(f"{s.type} {_codec_name(s)}" for s in container.streams if s.index != stream.index)
        return VideoInfo(
            path, stream.index, _codec_name(stream), int(first.width), int(first.height), pix_fmt, bits, frames,
            duration, Fraction(rate) if rate else None, Fraction(stream.time_base), int(first.rotation or 0),
            _colour(first, ctx), others,
        )


def _first_frame(container: Any, stream: Any, path: Path) -> Any:
    av = import_av()
    try:
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():
                    return frame
            except av.error.InvalidDataError:
                continue  # a damaged packet: the next may decode
    except (av.FFmpegError, OSError) as e:
        raise VideoReadError(f"{path}: cannot decode its video ({_reason(e)})") from None
    raise VideoReadError(f"{path}: no frame of its video stream decodes (truncated or damaged)")


def _colour(frame: Any, ctx: Any) -> Colour:
    """The frame's colour description, with the matrix and range a player would assume where it is not given; the
    output is tagged with them, so a 4× larger picture (which players would take for HD) shows the same colours."""
    matrix = int(frame.colorspace or ctx.colorspace or _UNSPECIFIED)
    rng = int(frame.color_range or ctx.color_range or 0)
    guessed = []
    if matrix in (0, _UNSPECIFIED) or matrix not in _SWS_MATRIX:
        hd = frame.width >= 1280 or frame.height > 576
        matrix = _BT709 if hd else _SMPTE170M
        guessed.append(f"matrix {'BT.709' if hd else 'BT.601'}")
    if rng not in (_MPEG_RANGE, _JPEG_RANGE):
        rng = _JPEG_RANGE if frame.format.name.startswith("yuvj") else _MPEG_RANGE
        guessed.append("limited range" if rng == _MPEG_RANGE else "full range")
    primaries = int(frame.color_primaries or ctx.color_primaries or _UNSPECIFIED)
    transfer = int(frame.color_trc or ctx.color_trc or _UNSPECIFIED)
    return Colour(primaries, transfer, matrix, rng, " and ".join(guessed) or None)


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _is_cover(stream: Any) -> bool:
    """An attached picture (cover art) is a video stream of one image, not the film."""
    try:
        return bool(stream.disposition & stream.disposition.__class__.attached_pic)
    except (AttributeError, TypeError):
        return False


def _codec_name(stream: Any) -> str:
    try:
        return str(stream.codec.name)
    except Exception:  # a codec FFmpeg does not know has no descriptor
        return "unknown"


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or first_line(e)
    return str(text).rstrip(".")
