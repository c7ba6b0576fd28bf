"""The finished file: the upscaled picture's packets (from the encoded video) and the source's other streams,
interleaved by time into the output container, with the source's metadata, chapters and stream tags.

Audio, subtitle and data streams are copied packet for packet where the output container takes their codec; audio
it does not take is re-encoded to the container's audio codec (AAC in mp4 and mov, Opus in webm); anything else is
dropped. Each change is a note."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from esrgan_cli.video.codecs import import_av
from esrgan_cli.video.probe import VideoInfo

# Tags the muxer writes itself, or that describe the old file (mkvmerge's statistics, the source's encoder).
_OWN_TAGS = {"encoder", "duration", "major_brand", "minor_version", "compatible_brands", "creation_time",
             "handler_name", "vendor_id", "bps", "number_of_frames", "number_of_bytes", "_statistics_writing_app",
             "_statistics_writing_date_utc", "_statistics_tags"}
# Codecs a container may list but that its muxer cannot take as a plain copy (no codec tag for them).
_AUDIO_FALLBACK = {"mp4": "aac", "mov": "aac", "webm": "libopus", "matroska": "aac"}


def _tags(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in dict(metadata).items()
            if k.lower() not in _OWN_TAGS and not k.upper().startswith(("BPS", "NUMBER_OF_", "DURATION"))}


def _copy_description(src: Any, dst: Any) -> None:
    for key, value in _tags(src.metadata).items():
        dst.metadata[key] = value
    try:
        dst.disposition = src.disposition
    except (AttributeError, TypeError, ValueError):
        pass


class _Reencoder:
    """Audio the container does not take: decoded, resampled to what the encoder takes, encoded."""

    def __init__(self, av: Any, out: Any, source: Any, codec: str) -> None:
        ctx = source.codec_context
        self.stream = out.add_stream(codec, rate=ctx.sample_rate)
        self.stream.layout = ctx.layout
        enc = self.stream.codec_context
        fmt = enc.codec.audio_formats[0].name if enc.codec.audio_formats else "fltp"
        self.resampler = av.AudioResampler(format=fmt, layout=ctx.layout, rate=ctx.sample_rate,
                                           frame_size=enc.frame_size or None)
        self.out = out

    def feed(self, packet: Any) -> None:
        for frame in packet.decode():
            self._encode(frame)

    def _encode(self, frame: Any | None) -> None:
        for resampled in self.resampler.resample(frame):
            for p in self.stream.encode(resampled):
                self.out.mux(p)

    def flush(self) -> None:
        self._encode(None)
        for p in self.stream.encode(None):
            self.out.mux(p)


def mux(src: Path, pictures: list[Path], dst: Path, info: VideoInfo, fmt: str, notes: list[str], kind: str) -> None:
    """Write `dst` (format `fmt`, `kind` its extension for notes): the video streams of the segment files `pictures`,
    joined without re-encoding, in place of `src`'s, and `src`'s other streams."""
    av = import_av()
    # Timestamps are written as they are: the muxer's default shift of negative ones (AAC's priming packet at
    # -21 ms) would move the whole film by that much against its source.
    keep_time = {"avoid_negative_ts": "disabled"}
    with av.open(str(src)) as inp, av.open(str(pictures[0])) as pic, \
            av.open(str(dst), "w", format=fmt, options=keep_time) as out:
        for key, value in _tags(inp.metadata).items():
            out.metadata[key] = value
        supported = frozenset(out.supported_codecs)
        vin = pic.streams.video[0]
        vout = out.add_stream_from_template(vin)
        _copy_description(inp.streams[info.stream_index], vout)
        if info.rotation:
            vout.set_display_rotation(info.rotation)
        if fmt in ("mp4", "mov") and vin.codec_context.name == "hevc":
            vout.codec_tag = "hvc1"  # the tag Apple's players need; FFmpeg's default hev1 plays elsewhere only
        routes: dict[int, Any] = {}
        reencoders: dict[int, _Reencoder] = {}
        for s in inp.streams:
            if s.index == info.stream_index:
                continue
            name = _codec_name(s)
            label = f"{s.type} stream {s.index} ({name})"
            if s.type == "video" and not _is_cover(s):
                notes.append(f"{label}: only the first video stream is upscaled; this one was dropped")
            elif name in supported and s.type in ("audio", "subtitle", "data", "video", "attachment"):
                try:
                    o = out.add_stream_from_template(s)
                except (av.FFmpegError, ValueError) as e:
                    notes.append(f"{label}: cannot be copied into {kind} ({e}): dropped")
                    continue
                _copy_description(s, o)
                routes[s.index] = o
            elif s.type == "audio" and s.codec_context is not None:
                codec = _AUDIO_FALLBACK.get(fmt, "aac")
                r = _Reencoder(av, out, s, codec)
                _copy_description(s, r.stream)
                reencoders[s.index] = r
                notes.append(f"{label}: {kind} cannot hold {name}: re-encoded to {r.stream.codec_context.name}")
            else:
                notes.append(f"{label}: {kind} cannot hold {name}: dropped (write .mkv to keep it)")
        try:
            chapters = inp.chapters()
            if chapters:
                out.set_chapters(chapters)
        except (AttributeError, av.FFmpegError, ValueError) as e:
            notes.append(f"chapters not kept ({e})")
        wanted = [inp.streams[i] for i in list(routes) + list(reencoders)]
        picture = _joined(av, pictures)
        for side, packet in _interleaved(picture, inp.demux(wanted) if wanted else iter(())):
            index = packet.stream.index
            if side == 0:
                packet.stream = vout
                out.mux(packet)
            elif index in routes:
                packet.stream = routes[index]
                out.mux(packet)
            elif index in reencoders:
                reencoders[index].feed(packet)
        for r in reencoders.values():
            r.flush()


def _when(packet: Any) -> Fraction:
    t = packet.dts if packet.dts is not None else packet.pts
    return Fraction(t if t is not None else 0) * Fraction(packet.time_base)


def _joined(av: Any, pictures: list[Path]) -> Iterator[Any]:
    """The video packets of the segments, one after another. Each segment's encoder began afresh, so where its first
    decode timestamps would not pass the previous segment's last one (B-frame delay against a long frame just
    before), they are moved up to just after it; a timestamp is never moved past the packet's presentation time."""
    last: int | None = None
    for path in pictures:
        with av.open(str(path)) as segment:
            for packet in segment.demux(segment.streams.video[0]):
                if packet.dts is None and packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                if last is not None and (packet.dts is None or packet.dts <= last):
                    # Matroska stores no decode times: its demuxer leaves the first of each segment unknown, and
                    # the muxer would take their presentation times, which run ahead of the next packets'.
                    packet.dts = last + 1 if packet.pts is None else min(last + 1, packet.pts)
                if packet.dts is not None:
                    last = packet.dts
                yield packet


def _interleaved(a: Iterator[Any], b: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """Packets of the picture (side 0) and the source's other streams (side 1) in one stream ordered by decode time,
    each side in its own order, so the muxer's interleaving buffer stays small however long the film."""
    keyed_a = ((_when(p), 0, n, p) for n, p in enumerate(a))
    keyed_b = ((_when(p), 1, n, p) for n, p in enumerate(b) if p.dts is not None or p.pts is not None)
    for _, side, _, packet in heapq.merge(keyed_a, keyed_b, key=lambda k: (k[0], k[1], k[2])):
        yield side, packet


def _codec_name(stream: Any) -> str:
    try:
        return str(stream.codec.name)
    except Exception:
        return "unknown"


def _is_cover(stream: Any) -> bool:
    try:
        return bool(stream.disposition & stream.disposition.__class__.attached_pic)
    except (AttributeError, TypeError):
        return False
