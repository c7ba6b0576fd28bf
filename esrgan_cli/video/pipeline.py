"""`upscale_video`: a video file through the model into another, frames streaming decode → model → encode through
bounded queues (memory stays flat however long the film), each frame keeping its own timestamp.

The picture is encoded into a temporary video-only file beside the output; the output is then muxed from it and the
source's other streams (see `_mux.py`) into a second temporary file, renamed into place when complete. No printing:
progress and notes go to the caller.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from esrgan_cli.errors import DiskFullError, EsrganError, VideoEncodeError, VideoReadError, first_line
from esrgan_cli.files import atomic_write, check_output, sha256_of, write_failure
from esrgan_cli.upscale.pipeline import UpscaleOptions, final_size
from esrgan_cli.video._frames import from_rgb, to_rgb
from esrgan_cli.video._mux import mux
from esrgan_cli.video._segments import Segment, SegmentJournal
from esrgan_cli.video._stages import END, Stage, get, put
from esrgan_cli.video.codecs import EncoderPlan, VideoEncoding, import_av, plan_encoding, stream_settings
from esrgan_cli.video.probe import VideoInfo, probe

if TYPE_CHECKING:
    from esrgan_cli.upscale.engine import Engine

QUEUE_FRAMES = 4  # frames waiting on each side of the model: enough to keep decode and encode busy
SEGMENT_SECONDS = 2.0  # of film per closed segment: what an interruption can cost, and a keyframe at each start


@dataclass(frozen=True)
class VideoProgress:
    """Where an upscale stands, after each frame."""

    frames: int  # frames written so far
    total: int | None  # frames in the film, when the container says
    position: float  # seconds into the film of the last frame
    duration: float | None  # the film's length in seconds, when known
    seconds: float  # wall time since the start


@dataclass
class VideoResult:
    frames: int
    held: int  # damaged frames replaced by the previous good one
    width: int
    height: int
    codec: str
    encoder: str
    pix_fmt: str
    seconds: float
    model_seconds: float  # wall time in the model (the rest is decoding, encoding and muxing)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Frame:
    pts: int
    rgb: np.ndarray
    held: int = 0  # 1 for a damaged frame's stand-in



def upscale_video(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], upscaler: Engine, *,
    options: UpscaleOptions | None = None, encoding: VideoEncoding | None = None,
    progress: Callable[[VideoProgress], None] | None = None, segment_seconds: float = SEGMENT_SECONDS,
) -> VideoResult:
    """Upscale the video `src` into `dst` (the container follows its extension: mp4, mkv, webm, mov).

    `options` mean what they mean for images (tile, overlap, outscale, tta; alpha and frame options do not apply);
    `encoding` picks codec, CRF, preset and pixel format (`VideoEncoding()`: h264 CRF 18 yuv420p, vp9 for webm).
    Audio, subtitles, metadata, chapters, rotation and colour description are kept (see README, "Video"). A file
    that is not a readable video raises VideoReadError; an encoding the container or PyAV cannot write raises
    VideoEncodeError, both before any work. `dst` appears complete or not at all.

    Resume: the picture is encoded in closed segments of `segment_seconds`, journaled in a hidden folder beside
    `dst`; after an interruption (KeyboardInterrupt) the same call goes on after the last journaled frame."""
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    options = options or UpscaleOptions()
    info = probe(src)
    check_output(src, dst)
    plan = plan_encoding(dst, encoding or VideoEncoding(), info.bits)
    notes = list(plan.notes)
    size = _output_size(info, upscaler.scale, options, plan, notes)
    if info.colour.guessed:
        notes.append(f"the source leaves its colours undescribed: {info.colour.guessed} assumed, as players do, and "
                     "written into the output so that it shows the same")
    journal = SegmentJournal(dst, _job_key(src, upscaler, options, plan, size, segment_seconds))
    journal.open()
    try:
        job = _Picture(src=src, info=info, options=options, plan=plan, size=size, segment_seconds=segment_seconds,
                       suffix=dst.suffix)
        counts = _encode_picture(job, journal, upscaler, progress, start)
        if counts.resumed:
            notes.append(f"resumed after {counts.resumed} frames ({len(journal.segments) - counts.new_segments} "
                         "segments kept from the run before)")
        if counts.held:
            notes.append(f"{counts.held} damaged frame{'s' if counts.held > 1 else ''} replaced by the frame before, "
                         "each at its own time")
        with atomic_write(dst) as tmp:
            try:
                mux(src, journal.paths(), tmp, info, plan.format, notes, dst.suffix.lower())
            except OSError as e:
                raise write_failure(dst, e) from None
    except (KeyboardInterrupt, DiskFullError):
        raise  # the journaled segments stay: the same call resumes after them
    except BaseException:
        journal.remove()
        raise
    journal.remove()
    return VideoResult(counts.frames, counts.held, size[0], size[1], plan.codec, plan.encoder, plan.pix_fmt,
                       time.perf_counter() - start, counts.model_seconds, notes)


def _output_size(info: VideoInfo, scale: int, options: UpscaleOptions, plan: EncoderPlan,
                 notes: list[str]) -> tuple[int, int]:
    """(width, height) written: the image rule, then rounded to the pixel format's chroma grid (even for 4:2:0)."""
    av = import_av()
    width, height = final_size(info.width, info.height, scale, options.outscale)
    # The smallest plane of a 64×64 frame tells the chroma subsampling: 32×32 for 4:2:0, so steps of 2×2.
    planes = av.VideoFormat(plan.pix_fmt, 64, 64).components
    step_w = 64 // max(1, min(int(c.width) for c in planes))
    step_h = 64 // max(1, min(int(c.height) for c in planes))
    even = (max(step_w, width - width % step_w), max(step_h, height - height % step_h))
    if even != (width, height):
        notes.append(f"{plan.pix_fmt} needs sizes in steps of {step_w}×{step_h}: the frames are resized to "
                     f"{even[0]}×{even[1]} instead of {width}×{height}")
    if options.max_output_pixels and even[0] * even[1] > options.max_output_pixels:
        raise VideoReadError(f"{info.path}: frames of {even[0]}×{even[1]} are over the limit of "
                             f"{options.max_output_pixels:,} pixels; raise it with --max-output-pixels")
    return even


@dataclass
class _Counts:
    frames: int = 0
    held: int = 0
    model_seconds: float = 0.0
    resumed: int = 0  # frames in the segments a run before left
    new_segments: int = 0


def _job_key(src: Path, upscaler: Engine, options: UpscaleOptions, plan: EncoderPlan, size: tuple[int, int],
             segment_seconds: float) -> dict[str, Any]:
    """What must match for segments of an earlier run to be reused: the same input file, model, pixel options,
    encoding and segment length."""
    stat = os.stat(src)
    weights = Path(upscaler.weights.path)
    model = sha256_of(weights) if weights.is_file() else repr(upscaler.config)
    # Weights blended with a twin at load (--strength) come from the same file: the strength tells them apart.
    model += f"@{upscaler.weights.metadata.get('esrgan.strength', '')}"
    return {"src": str(src.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "model": model,
            "options": {"tile": options.tile, "overlap": options.overlap, "outscale": options.outscale,
                        "tta": options.tta},
            "encoding": {"encoder": plan.encoder, "pix_fmt": plan.pix_fmt, "options": plan.options,
                         "format": plan.format},
            "size": list(size), "segment_seconds": segment_seconds}


@dataclass(frozen=True)
class _Picture:
    """What the picture's encoding works from: the source, its probe, the pixel options and the encoding plan."""
    src: Path
    info: VideoInfo
    options: UpscaleOptions
    plan: EncoderPlan
    size: tuple[int, int]
    segment_seconds: float
    suffix: str


def _encode_picture(job: _Picture, journal: SegmentJournal, upscaler: Engine,
                    progress: Callable[[VideoProgress], None] | None, start: float) -> _Counts:
    """Decode (thread) → model (this thread) → encode (thread) into closed segments journaled in `journal`,
    starting after what it already holds."""
    src, info, options, plan, size = job.src, job.info, job.options, job.plan, job.size
    segment_seconds, suffix = job.segment_seconds, job.suffix
    av = import_av()
    stop = threading.Event()
    decoded: queue.Queue[Any] = queue.Queue(QUEUE_FRAMES)
    upscaled: queue.Queue[Any] = queue.Queue(QUEUE_FRAMES)
    after = journal.resume_after
    counts = _Counts(frames=sum(s.frames for s in journal.segments), held=sum(s.held for s in journal.segments))
    counts.resumed = counts.frames
    tb = info.time_base
    span = Fraction(str(segment_seconds))  # 0.2 means a fifth of a second, not the float just above it

    def decode() -> None:
        with av.open(str(src)) as container:
            for frame in _frames(av, container, info, after):
                if not put(decoded, frame, stop):
                    return
        put(decoded, END, stop)

    def encode() -> None:
        out: Any = None
        stream: Any = None
        first = last = frames = held = 0
        name = ""

        def open_segment(pts: int) -> None:
            nonlocal out, stream, first, frames, held, name
            name = journal.next_name(suffix)
            out = av.open(str(journal.folder / name), "w", format=plan.format)
            stream = out.add_stream(plan.encoder, rate=info.rate or 25)
            stream.width, stream.height = size
            stream.time_base = tb
            ctx = stream.codec_context
            ctx.time_base = tb
            stream_settings(stream, plan)
            colour = info.colour
            ctx.color_primaries, ctx.color_trc = colour.primaries, colour.transfer
            ctx.colorspace, ctx.color_range = colour.matrix, colour.range
            first, frames, held = pts, 0, 0

        def close_segment() -> None:
            nonlocal out
            for packet in stream.encode(None):
                out.mux(packet)
            out.close()
            out = None
            journal.record(Segment(name, first, last, frames, held))
            counts.new_segments += 1

        try:
            while True:
                item = get(upscaled, stop, None)
                if item is END:
                    break
                if out is not None and (item.pts - first) * tb >= span:
                    close_segment()
                if out is None:
                    open_segment(item.pts)
                frame = from_rgb(av, item.rgb, plan.pix_fmt, info.colour)
                frame.pts = item.pts
                frame.time_base = tb
                for packet in stream.encode(frame):
                    out.mux(packet)
                last = item.pts
                frames += 1
                held += item.held
            if out is not None and not stop.is_set():
                close_segment()
        finally:
            if out is not None:
                out.close()  # stopped: a segment left out of the journal, removed by the next run

    decoder = Stage("esrgan-decode", decode)
    encoder = Stage("esrgan-encode", encode)
    decoder.start()
    encoder.start()
    try:
        while True:
            item = get(decoded, stop, decoder)
            if item is END:
                break
            t0 = time.perf_counter()
            rgb = _upscale_frame(item.rgb, upscaler, options, size)
            counts.model_seconds += time.perf_counter() - t0
            if not put(upscaled, _Frame(item.pts, rgb, item.held), stop):
                break
            counts.frames += 1
            counts.held += item.held
            if progress:
                progress(VideoProgress(counts.frames, info.frames, float(item.pts * tb), info.duration,
                                       time.perf_counter() - start))
        if decoder.error is None:
            put(upscaled, END, stop)
        else:
            stop.set()
    except BaseException:
        stop.set()
        raise
    finally:
        decoder.join()
        encoder.join()
    for stage in (decoder, encoder):
        if stage.error is not None:
            raise _one_line(stage.error, src if stage is decoder else journal.folder)
    if counts.frames == 0:
        raise VideoReadError(f"{src}: no frame of its video stream decodes")
    return counts


def _one_line(e: BaseException, path: Path) -> BaseException:
    if isinstance(e, EsrganError):
        return e
    av = import_av()
    if isinstance(e, av.FFmpegError):
        return VideoEncodeError(f"{path}: {first_line(e)}") if path.name.startswith(".") else \
            VideoReadError(f"{path}: {first_line(e)}")
    if isinstance(e, OSError):
        return write_failure(path, e)
    return e


def _frames(av: Any, container: Any, info: VideoInfo, after: int | None) -> Iterator[_Frame]:
    """Every frame of the video stream after pts `after` as RGB with its own pts, in presentation order. A packet
    that does not decode, or a frame the decoder marks corrupt, is replaced by the last good frame at its own
    timestamp."""
    stream = container.streams[info.stream_index]
    stream.thread_type = "AUTO"
    bits = 8 if info.bits <= 8 else 16
    last: np.ndarray | None = None
    last_pts: int | None = None
    missing: list[int] = []  # timestamps of damaged frames, held until the next good frame's place is known

    def held_before(pts: int | None) -> Iterator[_Frame]:
        nonlocal last_pts
        while missing and last is not None and (pts is None or missing[0] < pts):
            t = missing.pop(0)
            if last_pts is None or t > last_pts:
                last_pts = t
                if after is None or t > after:
                    yield _Frame(t, last, held=1)

    def decoded(packet: Any) -> list[Any]:
        try:
            return list(packet.decode())
        except av.error.InvalidDataError:
            if packet.pts is not None:
                missing.append(int(packet.pts))
                missing.sort()
            return []

    for packet in container.demux(stream):
        for frame in decoded(packet):
            pts = frame.pts
            if pts is None:
                pts = (last_pts + 1) if last_pts is not None else 0
            if frame.is_corrupt and last is not None:
                missing.append(int(pts))
                missing.sort()
                continue
            yield from held_before(pts)
            if last_pts is not None and pts <= last_pts:
                continue  # a repeated timestamp cannot be encoded; the frame before stands for it
            last = to_rgb(frame, info.colour, bits)  # also before `after`: a damaged frame just after may hold it
            last_pts = int(pts)
            if after is None or pts > after:
                yield _Frame(int(pts), last)
    yield from held_before(None)


def _upscale_frame(rgb: np.ndarray, upscaler: Engine, options: UpscaleOptions, size: tuple[int, int]) -> np.ndarray:
    """One RGB frame through the model, as images go (tile, overlap, tta), resized to `size` if that differs."""
    s = upscaler.scale
    image = rgb.astype(np.float32) / np.iinfo(rgb.dtype).max
    canvas = np.empty((rgb.shape[0] * s, rgb.shape[1] * s, upscaler.channels), rgb.dtype)
    upscaler.upscale_into(image, canvas, options.tile, options.overlap, tta=options.tta)
    out = canvas[..., :3]
    if (out.shape[1], out.shape[0]) != size:
        out = _resize(out, size)
    return np.ascontiguousarray(out)


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos to (width, height), as --outscale resizes images."""
    if rgb.dtype == np.uint8:
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    planes = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)) for c in range(3)]
    return np.clip(np.rint(np.stack(planes, axis=2)), 0, 65535).astype(np.uint16)

