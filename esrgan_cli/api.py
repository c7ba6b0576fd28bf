"""The Python API's entry points: a model by name, file or Hub location, on a device, ready to upscale.

    >>> import esrgan_cli
    >>> upscaler = esrgan_cli.load_model("compact-x4", device="cpu")
    >>> big = upscaler.upscale(image)          # a PIL.Image or a numpy array; the same kind comes back
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from esrgan_cli.errors import NoTwinError, WeightsError

if TYPE_CHECKING:
    import torch

    from esrgan_cli.model.weights import LoadedWeights
    from esrgan_cli.upscale.device import Precision
    from esrgan_cli.upscale.upscaler import Upscaler



@dataclass(frozen=True)
class ModelInfo:
    """A registry model, as `available_models` lists it."""

    name: str
    description: str
    scale: int
    license: str
    source: str  # bundled:FILE or hf:OWNER/REPO/FILE
    size_bytes: int | None
    bundled: bool  # ships inside the package: works offline
    cached: bool  # usable offline now (bundled, or downloaded before)
    default: bool
    twin: str | None = None  # its faithful (PSNR-stage) twin, which `strength` interpolates towards


def load_model(
    spec: str | Path | LoadedWeights | Mapping[str, torch.Tensor] | None = None,
    device: str = "auto", precision: Precision = "auto", strength: float | None = None,
) -> Upscaler:
    """An `Upscaler` for `spec`: a registry name (None: the default model), a weights file in any supported
    layout, `hf:OWNER/REPO/FILE[@REVISION]`, already loaded `LoadedWeights`, or a state dict of tensors.

    `device`: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps. `precision`: auto (fp16 on CUDA, fp32
    elsewhere), fp32, fp16 or bf16. `strength` S in [0, 1]: for a registry model with a faithful twin
    (`ModelInfo.twin`), its weights interpolated at load, S·model + (1 − S)·twin, in float32 before the precision
    is applied (1: the model itself, 0: the twin); any other model raises `NoTwinError`. Raises an `EsrganError`
    subclass with a one-line message on failure."""
    import torch

    from esrgan_cli.model.registry import load_named
    from esrgan_cli.model.weights import LoadedWeights, from_checkpoint
    from esrgan_cli.upscale.device import choose_placement
    from esrgan_cli.upscale.upscaler import Upscaler

    placement = choose_placement(device, precision)
    if strength is not None and not isinstance(spec, (str, Path, type(None))):
        raise NoTwinError("strength needs a registry model with a faithful twin; weights given directly have none")
    if isinstance(spec, LoadedWeights):
        weights = spec
    elif isinstance(spec, Mapping):
        if not all(isinstance(v, torch.Tensor) for v in spec.values()):
            raise WeightsError("a state dict must map names to tensors")
        weights = from_checkpoint(dict(spec))
    else:
        weights = load_named(str(spec) if spec is not None else None, strength=strength)
    return Upscaler(weights, placement)


def available_models() -> list[ModelInfo]:
    """The registry's models, the default first."""
    from esrgan_cli.model.registry import BundledFile, is_cached, load_registry

    registry = load_registry()
    infos = [
        ModelInfo(name=e.name, description=e.description, scale=e.config.scale, license=e.license,
                  source=e.origin(), size_bytes=e.size, bundled=isinstance(e.source, BundledFile),
                  cached=is_cached(e.source), default=e.name == registry.default, twin=e.twin)
        for e in registry.models.values()
    ]
    return sorted(infos, key=lambda m: not m.default)
