"""Tiny video files made with PyAV for the video tests: a moving test pattern, a sine tone, subtitles, rotation,
irregular timestamps, 10 bits. Import only after `pytest.importorskip("av")`."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MS = Fraction(1, 1000)


def pattern(i: int, width: int, height: int) -> np.ndarray:
    """Frame `i` of a moving test pattern: gradients and a bar that move by several pixels a frame, so every frame
    differs clearly from its neighbours."""
    yy, xx = np.mgrid[0:height, 0:width]
    r = (xx * 255 // max(1, width - 1) + i * 23) % 256
    g = (yy * 255 // max(1, height - 1) + i * 11) % 256
    b = np.where((xx - 3 * i) % width < width // 4, 230, 30)
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def make_clip(path: Path, *, frames: int = 12, width: int = 32, height: int = 24, codec: str = "libx264",
              pix_fmt: str = "yuv420p", audio: bool = True, subtitles: bool = False, rotation: int | None = None,
              pts: list[int] | None = None, title: str = "Test clip", chapters: bool = False) -> Path:
    """Write a clip: `frames` frames of `pattern` at 25 fps (or at `pts` milliseconds), a 440 Hz sine in AAC, a
    subrip track, a rotation tag, language tags on each stream and a title."""
    stamps = pts if pts is not None else [40 * i for i in range(frames)]
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = MS
        video.codec_context.time_base = MS
        if codec == "libx265":
            video.options = {"x265-params": "log-level=error"}
        if rotation is not None:
            video.set_display_rotation(rotation)
        video.metadata["language"] = "fra"
        out.metadata["title"] = title
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=48000)
            sound.layout = "mono"
            sound.metadata["language"] = "eng"
        subs = None
        if subtitles:
            subs = out.add_mux_stream("subrip")
            subs.time_base = MS
            subs.metadata["language"] = "deu"
        if chapters:
            out.set_chapters([
                {"id": 1, "start": 0, "end": 200, "time_base": MS, "metadata": {"title": "One"}},
                {"id": 2, "start": 200, "end": stamps[-1] + 40, "time_base": MS, "metadata": {"title": "Two"}},
            ])
        for i, t in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            frame.pts, frame.time_base = t, MS
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            seconds = (stamps[-1] + 40) / 1000
            t = np.arange(int(48000 * seconds)) / 48000
            samples = (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32)[None]
            for k in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 1024]), format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = 48000, k
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
        if subs is not None:
            for k, text in enumerate([b"Hallo Welt", b"Zweite Zeile"]):
                packet = av.Packet(text)
                packet.stream = subs
                packet.pts = packet.dts = 100 * k
                packet.duration = 80
                packet.time_base = MS
                out.mux(packet)
    return path


def frame_times(path: Path) -> list[Fraction]:
    """Presentation time of every frame of the first video stream, in seconds."""
    with av.open(str(path)) as c:
        return [Fraction(f.pts) * Fraction(f.time_base) for f in c.decode(video=0)]


def rgb_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def packets(path: Path, kind: str) -> list[bytes]:
    """The payload of every packet of the first stream of `kind` (audio, subtitle), in file order."""
    with av.open(str(path)) as c:
        streams = {"audio": c.streams.audio, "subtitle": c.streams.subtitles}[kind]
        if not streams:
            return []
        return [bytes(p) for p in c.demux(streams[0]) if p.size]


def with_damaged_packet(src: Path, dst: Path, index: int) -> Path:
    """`src`'s video stream remuxed into `dst` with packet number `index` replaced by bytes no decoder reads (at
    the same timestamps)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for n, packet in enumerate(p for p in inp.demux(stream) if p.dts is not None or p.pts is not None):
            if n == index:
                junk = av.Packet(b"\x00not a picture" * 16)
                junk.pts, junk.dts, junk.duration = packet.pts, packet.dts, packet.duration
                junk.time_base = packet.time_base
                packet = junk
            packet.stream = copy
            out.mux(packet)
    return dst
