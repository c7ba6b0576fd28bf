"""Model names → weight files: the registry in `weights/`, bundled files (checked against their pinned sha256
before use; they need no network), and `--model` values of every kind. Downloads are `hub.py`'s.

Reading the registry imports no torch (`esrgan models list` answers at once): weights are loaded only in
`load_named`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from esrgan_cli.errors import ChecksumError, ModelNotFoundError, NoTwinError
from esrgan_cli.files import sha256_of
from esrgan_cli.model.config import RRDBConfig
from esrgan_cli.model.hub import HubFile, fetch, is_local

if TYPE_CHECKING:
    from esrgan_cli.model.weights import LoadedWeights


@dataclass(frozen=True)
class BundledFile:
    path: Path  # beside the registry file
    sha256: str
    size: int


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    source: HubFile | BundledFile
    config: RRDBConfig
    license: str
    # The faithful (PSNR-stage) model this one was fine-tuned from, which `strength` interpolates towards; None
    # where no such model is in the registry (interpolating unrelated networks gives no meaningful model).
    twin: str | None = None

    @property
    def size(self) -> int | None:
        return self.source.size

    def origin(self) -> str:
        if isinstance(self.source, BundledFile):
            return f"bundled:{self.source.path.name}"
        return f"hf:{self.source.repo}/{self.source.filename}"


@dataclass(frozen=True)
class Registry:
    default: str
    models: dict[str, RegistryEntry]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    source: str  # what the user asked for, for messages and metadata


def weights_dir() -> Path:
    """The `weights/` folder next to this code: `esrgan_cli/bundled` in an installed wheel, `weights/` at the root
    of a source checkout. Only then the import system, for installs that are not plain files: asking it first
    found an editable install's folder (another checkout) before the checkout this code runs from."""
    package = Path(__file__).resolve().parents[1]  # esrgan_cli/model/registry.py → esrgan_cli
    for folder in (package / "bundled", package.parent / "weights"):
        if (folder / "registry.json").is_file():
            return folder
    try:
        installed = Path(str(resources.files("esrgan_cli.bundled")))
        if (installed / "registry.json").is_file():
            return installed
    except ModuleNotFoundError:
        pass
    return package.parent / "weights"


def load_registry(path: Path | None = None) -> Registry:
    path = path or weights_dir() / "registry.json"
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    models = {}
    for name, e in data["models"].items():
        source: HubFile | BundledFile
        if "file" in e:
            source = BundledFile(Path(path).parent / e["file"], e["sha256"], e["size"])
        else:
            source = HubFile(e["repo"], e["filename"], e["revision"], e["sha256"], e.get("size"))
        models[name] = RegistryEntry(name, e.get("description", ""), source, RRDBConfig(**e["arch"]), e["license"],
                                     e.get("twin"))
    for entry in models.values():
        twin = models.get(entry.twin) if entry.twin is not None else None
        if entry.twin is not None and (twin is None or twin.config != entry.config or twin.twin is not None):
            raise ModelNotFoundError(f"{path}: {entry.name}'s twin {entry.twin!r} is not a registry model of the same "
                                     "architecture without a twin of its own")
    return Registry(data["default"], models)


_HF_SPEC = re.compile(r"^hf:(?P<repo>[^/@\s]+/[^/@\s]+)/(?P<file>[^@\s]+?)(?:@(?P<rev>[^@\s]+))?$")


def parse_hf_spec(spec: str) -> HubFile:
    """`hf:OWNER/REPO/FILE[@REVISION]` → HubFile (no pinned checksum: the user chose the file)."""
    m = _HF_SPEC.match(spec)
    if not m:
        raise ModelNotFoundError(f"bad Hub location {spec!r}: expected hf:OWNER/REPO/FILE[@REVISION]")
    return HubFile(m["repo"], m["file"], m["rev"] or "main")


def resolve_model(spec: str, registry: Registry | None = None) -> ResolvedModel:
    """A `--model` value → a local weights file, downloading and converting as needed."""
    registry = registry or load_registry()
    if spec in registry.models:
        entry = registry.models[spec]
        if isinstance(entry.source, BundledFile):
            return ResolvedModel(bundled_path(entry.source, f"model {spec!r}"), spec)
        return ResolvedModel(fetch(entry.source, f"model {spec!r}"), spec)
    if spec.startswith("hf:"):
        return ResolvedModel(fetch(parse_hf_spec(spec), spec), spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return ResolvedModel(path, spec)
    known = ", ".join(sorted(registry.models))
    if path.exists():
        raise ModelNotFoundError(f"model {spec!r} is not a file")
    raise ModelNotFoundError(f"no model named {spec!r} and no such file (known models: {known})")


def load_named(spec: str | None, registry: Registry | None = None, strength: float | None = None) -> LoadedWeights:
    """The weights a `--model` value names (None: the registry's default), downloaded and converted as needed.

    `strength` S (0..1): the model's weights interpolated with its faithful twin's, S·model + (1 − S)·twin (ESRGAN's
    network interpolation), for registry models that have one; `NoTwinError` for any other model."""
    from esrgan_cli.model.weights import load_weights

    registry = registry or load_registry()
    name = spec if spec is not None else registry.default
    if strength is None:
        return load_weights(resolve_model(name, registry).path)
    if not 0 <= strength <= 1:  # before any download; also refuses NaN
        raise ValueError(f"strength must be within [0, 1], got {strength!r}")
    twin = twin_of(name, registry)
    if twin is None:
        raise NoTwinError(f"strength needs a model with a faithful twin; {name} has none "
                          f"(models with one: {', '.join(with_twins(registry))})")
    from esrgan_cli.model.blend import with_strength

    model = load_weights(resolve_model(name, registry).path)
    return with_strength(model, load_weights(resolve_model(twin, registry).path), strength)


def twin_of(spec: str | None, registry: Registry | None = None) -> str | None:
    """The faithful twin of the registry model `spec` names (None: the default), or None where it has none (a file,
    a Hub location, or a registry model without one)."""
    registry = registry or load_registry()
    entry = registry.models.get(spec if spec is not None else registry.default)
    return entry.twin if entry is not None else None


def with_twins(registry: Registry | None = None) -> list[str]:
    """The registry models that have a faithful twin, so take a strength."""
    return [e.name for e in (registry or load_registry()).models.values() if e.twin is not None]


def bundled_path(bundled: BundledFile, label: str) -> Path:
    """A bundled file, verified: a damaged install fails here with a clear message, not later as a bad model."""
    path = bundled.path
    if not path.is_file():
        raise ModelNotFoundError(f"{label}: {path} is missing from this installation; reinstall esrgan")
    actual = sha256_of(path)
    if actual != bundled.sha256:
        raise ChecksumError(f"{label}: sha256 of {path} is {actual}, expected {bundled.sha256}; reinstall esrgan")
    return path


def is_cached(source: HubFile | BundledFile) -> bool:
    """True when the model can be used offline: bundled, converted by us, or in the Hugging Face cache."""
    return isinstance(source, BundledFile) or is_local(source)
