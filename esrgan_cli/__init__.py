"""esrgan: upscale images with ESRGAN (RRDBNet).

    import esrgan_cli
    upscaler = esrgan_cli.load_model()            # the bundled default; or a name, a file, hf:OWNER/REPO/FILE
    big = upscaler.upscale(image)                 # PIL.Image or numpy array in, the same kind out

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
    OutOfMemoryError,
    OutputWriteError,
    WeightsError,
)

if TYPE_CHECKING:
    from esrgan_cli.api import ModelInfo, available_models, load_model
    from esrgan_cli.model.weights import LoadedWeights
    from esrgan_cli.upscale.upscaler import Upscaler

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "DeviceError",
    "DiskFullError",
    "EsrganError",
    "ImageReadError",
    "ImageWriteError",
    "LoadedWeights",
    "ModelInfo",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "OutputWriteError",
    "Upscaler",
    "WeightsError",
    "__version__",
    "available_models",
    "load_model",
]

# Names resolved on first access (PEP 562), so `import esrgan_cli` does not import torch.
_LAZY = {
    "load_model": "esrgan_cli.api",
    "available_models": "esrgan_cli.api",
    "ModelInfo": "esrgan_cli.api",
    "Upscaler": "esrgan_cli.upscale.engine",
    "LoadedWeights": "esrgan_cli.model.weights",
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
