"""Typed errors. Each carries a one-line message meant for the user; the CLI prints it and exits 1."""

from __future__ import annotations

import copy


class EsrganError(Exception):
    """Base of every expected failure: the message is complete and fits on one line."""


class ImageReadError(EsrganError):
    """The input is missing, unreadable, not an image, truncated or too large."""


class OutputWriteError(EsrganError):
    """An output (image, weights, report) cannot be written where the user asked."""


class DiskFullError(OutputWriteError):
    """The disk (or quota) filled up while writing; nothing partial was left. A batch stops here, resumable."""


class ImageWriteError(OutputWriteError):
    """The output image cannot be written: unknown format, a folder in the way, the input itself."""


class WeightsError(EsrganError):
    """A weights file is unsafe, unreadable, or not an RRDBNet."""


class ModelNotFoundError(EsrganError):
    """A model name or Hub location cannot be resolved to a file."""


class ChecksumError(EsrganError):
    """A downloaded file does not match its pinned sha256."""


class NoTwinError(EsrganError):
    """A strength was asked of a model that has no faithful (PSNR-stage) twin to interpolate with."""


class DeviceError(EsrganError):
    """The requested device or precision is not available."""


class OutOfMemoryError(EsrganError):
    """The device ran out of memory even at the smallest tile."""


class FolderBusyError(OutputWriteError):
    """Another esrgan batch is writing into the same output folder."""


class BatchError(EsrganError):
    """The batch cannot start: no inputs, a missing path, or two inputs that would write one output."""


class ClusterError(EsrganError):
    """The cluster cannot be used: Ray is missing, the address does not answer, or replicas cannot start."""


class RayMissingError(ClusterError):
    """`--ray` without the optional extra installed."""


class EvalDataError(EsrganError):
    """The HR/LR folders cannot be paired."""


class TrainError(EsrganError):
    """A run cannot start or continue."""


class TrainingDataError(EsrganError):
    """The training folder holds no usable image."""


class VideoReadError(ImageReadError):
    """A video input is unreadable: no video stream, truncated, an unknown codec, not a video at all."""


class VideoEncodeError(OutputWriteError):
    """The video output cannot be written as asked: a codec the container or this PyAV lacks, a bad --pix-fmt."""


class VideoMissingError(EsrganError):
    """A video input or output without the optional `video` extra (PyAV) installed."""



def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to one line, for error messages that must stay on one line."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__


def naming(path: object, e: EsrganError) -> EsrganError:
    """`e` (same type) with its message starting with `path`, so a line in a batch says which file it is about.
    Raise it `from e`: the original stays its cause."""
    if str(e).startswith(str(path)):
        return e
    named = copy.copy(e)
    named.args = (f"{path}: {e}",)
    return named
