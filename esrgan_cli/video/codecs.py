"""Which encoder writes a `--codec`, with what defaults, into which container: the `video` extra's choices.

PyAV is imported only inside functions, so the command line can name the codecs (and this module can be imported)
without it; `import_av` turns its absence into one line naming the install command.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from esrgan_cli.defaults import VIDEO_CODECS, VIDEO_INSTALL_HINT, VIDEO_OUTPUT_SUFFIXES
from esrgan_cli.errors import VideoEncodeError, VideoMissingError

# FFmpeg's encoders for each --codec, the first one present wins.
ENCODERS: dict[str, tuple[str, ...]] = {
    "h264": ("libx264",),
    "hevc": ("libx265",),
    "vp9": ("libvpx-vp9",),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "ffv1": ("ffv1",),
}
# Constant-quality defaults, each about "visually lossless" on its own scale: x264's 18 is the usual such point,
# x265's scale sits about 4-5 above x264's for the same look, and libvpx/SVT-AV1 use 0-63 scales where mid-20s and
# around 28 look alike to x264 18 on upscaled (smooth, detailed) material. FFV1 is lossless and takes no CRF.
DEFAULT_CRF: dict[str, int | None] = {"h264": 18, "hevc": 22, "vp9": 24, "av1": 28, "ffv1": None}
CRF_RANGE = {"h264": (0, 51), "hevc": (0, 51), "vp9": (0, 63), "av1": (0, 63)}
# -o's extension → FFmpeg's muxer, and the codec written when --codec is not given.
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".mov": "mov"}
DEFAULT_CODEC = {".mp4": "h264", ".mkv": "h264", ".webm": "vp9", ".mov": "h264"}
assert set(CONTAINERS) == set(VIDEO_OUTPUT_SUFFIXES)


@dataclass(frozen=True)
class VideoEncoding:
    """How the upscaled picture is encoded. Pass by keyword; None picks the default explained in the README."""

    codec: str | None = None  # h264, hevc, vp9, av1, ffv1; None: h264 (vp9 for .webm)
    crf: int | None = None  # constant quality; None: the codec's DEFAULT_CRF
    preset: str | None = None  # the encoder's speed/size trade-off (x264/x265 names, SVT-AV1 0-13, VP9 cpu-used)
    pix_fmt: str | None = None  # None: yuv420p, or yuv420p10le for a source above 8 bits where the codec has it


@dataclass(frozen=True)
class EncoderPlan:
    """A `VideoEncoding` resolved against the installed PyAV, the container and the source."""

    codec: str
    encoder: str
    pix_fmt: str
    bits: int  # bits per sample of pix_fmt (8, 10, 12, 16): what the RGB frames between model and encoder carry
    crf: int | None
    options: dict[str, str]
    format: str  # FFmpeg's muxer name
    notes: list[str] = field(default_factory=list)


def import_av() -> ModuleType:
    """PyAV, or one line that says how to install it."""
    try:
        import av
    except ImportError:
        raise VideoMissingError(
            f"video needs PyAV, an optional extra: {VIDEO_INSTALL_HINT} in the esrgan checkout") from None
    return av


def encoder_for(codec: str) -> str | None:
    """The FFmpeg encoder that writes `codec` in the installed PyAV, or None."""
    av = import_av()
    available = av.codecs_available
    return next((name for name in ENCODERS[codec] if name in available), None)


def available_codecs() -> list[str]:
    """The --codec names the installed PyAV can write (empty without PyAV)."""
    try:
        import_av()
    except VideoMissingError:
        return []
    return [c for c in VIDEO_CODECS if encoder_for(c) is not None]


def container_format(dst: Path) -> str:
    suffix = Path(dst).suffix.lower()
    if suffix not in CONTAINERS:
        raise VideoEncodeError(f"{dst}: unknown video extension {suffix!r} (use {', '.join(CONTAINERS)})")
    return CONTAINERS[suffix]


def supported_codecs(fmt: str) -> frozenset[str]:
    """Codec names FFmpeg's muxer `fmt` accepts."""
    av = import_av()
    with av.open(io.BytesIO(), "w", format=fmt) as probe:
        return frozenset(probe.supported_codecs)


def pix_fmt_bits(pix_fmt: str) -> int:
    av = import_av()
    fmt = av.VideoFormat(pix_fmt)
    return max(int(c.bits) for c in fmt.components)


def plan_encoding(dst: Path, encoding: VideoEncoding, source_bits: int = 8) -> EncoderPlan:
    """Resolve `encoding` for writing `dst` from a source of `source_bits`; a choice that cannot be written is one
    line (VideoEncodeError) before any work."""
    av = import_av()
    fmt = container_format(dst)
    suffix = Path(dst).suffix.lower()
    codec = encoding.codec or DEFAULT_CODEC[suffix]
    if codec not in ENCODERS:
        raise VideoEncodeError(f"unknown codec {codec!r} (use {', '.join(VIDEO_CODECS)})")
    encoder = encoder_for(codec)
    if encoder is None:
        have = ", ".join(available_codecs()) or "none"
        raise VideoEncodeError(f"this PyAV has no {codec} encoder ({' or '.join(ENCODERS[codec])}); it writes: {have}")
    if codec not in supported_codecs(fmt):
        fits = [c for c in VIDEO_CODECS if c in supported_codecs(fmt)]
        raise VideoEncodeError(f"{dst}: {suffix} cannot hold {codec} (it takes {', '.join(fits)}); choose another "
                               "--codec or extension")
    formats = [f.name for f in (av.Codec(encoder, "w").video_formats or [])]
    notes: list[str] = []
    if encoding.pix_fmt is not None:
        if encoding.pix_fmt not in formats:
            raise VideoEncodeError(
                f"{encoder} cannot write --pix-fmt {encoding.pix_fmt} (it takes {', '.join(formats)})")
        pix_fmt = encoding.pix_fmt
    elif codec == "ffv1":
        pix_fmt = "yuv444p10le" if source_bits > 8 else "yuv444p"  # lossless: no chroma is thrown away
    elif source_bits > 8 and "yuv420p10le" in formats:
        pix_fmt = "yuv420p10le"
    else:
        pix_fmt = "yuv420p"
        if source_bits > 8:
            notes.append(f"{encoder} here writes 8 bits only: the {source_bits}-bit source becomes 8-bit")
    crf = encoding.crf if encoding.crf is not None else DEFAULT_CRF[codec]
    if codec == "ffv1":
        if encoding.crf is not None:
            raise VideoEncodeError("--crf does not apply to ffv1, which is lossless")
        crf = None
    elif crf is not None:
        low, high = CRF_RANGE[codec]
        if not low <= crf <= high:
            raise VideoEncodeError(f"--crf {crf} is outside {codec}'s range {low}..{high}")
    return EncoderPlan(codec, encoder, pix_fmt, pix_fmt_bits(pix_fmt), crf,
                       _encoder_options(encoder, crf, encoding.preset), fmt, notes)


def _encoder_options(encoder: str, crf: int | None, preset: str | None) -> dict[str, str]:
    options: dict[str, str] = {}
    if crf is not None:
        options["crf"] = str(crf)
    if encoder == "libx264":
        options["preset"] = preset or "medium"
    elif encoder == "libx265":
        options["preset"] = preset or "medium"
        options["x265-params"] = "log-level=error"  # x265 prints its banner on fd 2 otherwise
    elif encoder == "libvpx-vp9":
        options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": preset or "2"})
    elif encoder == "libsvtav1":
        options["preset"] = preset or "8"
    elif encoder == "libaom-av1":
        options.update({"b": "0", "cpu-used": preset or "6", "row-mt": "1"})
    elif encoder == "ffv1":
        options.update({"level": "3", "slicecrc": "1"})
    elif preset is not None:
        options["preset"] = preset
    return options


def stream_settings(stream: Any, plan: EncoderPlan) -> None:
    """Encoder options on a new output stream (PyAV's `VideoStream`)."""
    stream.pix_fmt = plan.pix_fmt
    stream.options = dict(plan.options)
