"""esrgan: upscale images with ESRGAN (RRDBNet).

    import esrgan_cli
    upscaler = esrgan_cli.load_model()            # the bundled default; or a name, a file, hf:OWNER/REPO/FILE
    big = upscaler.upscale(image)                 # PIL.Image or numpy array in, the same kind out
    esrgan_cli.upscale_files(["photos/"], "big/") # a whole batch, as `esrgan upscale photos/ -o big/` runs it
    esrgan_cli.upscale_video("clip.mp4", "clip_x4.mp4", upscaler)  # a video (the `video` extra, PyAV)

Importing the package is cheap: torch, numpy and Pillow load on first use of what needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esrgan_cli.errors import (
    ChecksumError,
    DeviceError,
    DiskFullError,
    EsrganError,
    ImageReadError,
    ImageWriteError,
    ModelNotFoundError,
    NoTwinError,
    OutOfMemoryError,
    OutputWriteError,
    WeightsError,
)

if TYPE_CHECKING:
    from esrgan_cli.api import ModelInfo, available_models, load_model
    from esrgan_cli.batch.cluster.protocol import ClusterOptions
    from esrgan_cli.batch.plan import BatchOptions
    from esrgan_cli.batch.report import BatchSummary
    from esrgan_cli.batch.run import BatchEvents, upscale_files
    from esrgan_cli.model.weights import LoadedWeights
    from esrgan_cli.upscale.pipeline import UpscaleOptions
    from esrgan_cli.upscale.upscaler import Upscaler
    from esrgan_cli.video.codecs import VideoEncoding
    from esrgan_cli.video.pipeline import VideoProgress, VideoResult, upscale_video

__version__ = "0.1.0"

__all__ = [
    "BatchEvents",
    "BatchOptions",
    "BatchSummary",
    "ChecksumError",
    "ClusterOptions",
    "DeviceError",
    "DiskFullError",
    "EsrganError",
    "ImageReadError",
    "ImageWriteError",
    "LoadedWeights",
    "ModelInfo",
    "ModelNotFoundError",
    "NoTwinError",
    "OutOfMemoryError",
    "OutputWriteError",
    "UpscaleOptions",
    "Upscaler",
    "VideoEncoding",
    "VideoProgress",
    "VideoResult",
    "WeightsError",
    "__version__",
    "available_models",
    "load_model",
    "upscale_files",
    "upscale_video",
]

# Names resolved on first access (PEP 562), so `import esrgan_cli` does not import torch.
_LAZY = {
    "load_model": "esrgan_cli.api",
    "available_models": "esrgan_cli.api",
    "ModelInfo": "esrgan_cli.api",
    "Upscaler": "esrgan_cli.upscale.upscaler",
    "LoadedWeights": "esrgan_cli.model.weights",
    "upscale_files": "esrgan_cli.batch.run",
    "BatchEvents": "esrgan_cli.batch.run",
    "BatchOptions": "esrgan_cli.batch.plan",
    "BatchSummary": "esrgan_cli.batch.report",
    "ClusterOptions": "esrgan_cli.batch.cluster.protocol",
    "UpscaleOptions": "esrgan_cli.upscale.pipeline",
    "upscale_video": "esrgan_cli.video.pipeline",
    "VideoProgress": "esrgan_cli.video.pipeline",
    "VideoResult": "esrgan_cli.video.pipeline",
    "VideoEncoding": "esrgan_cli.video.codecs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'esrgan_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
