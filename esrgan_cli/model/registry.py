"""Model names → weight files: the registry in `weights/`, bundled files, Hub downloads, checksums, and the
conversion cache.

A bundled model is a safetensors file shipped in `weights/` (inside the installed package), checked against its
pinned sha256 before use; it needs no network.
A registry model is downloaded once through `huggingface_hub.hf_hub_download`
(the standard Hub cache, so HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE are honoured),
verified against its pinned sha256, and — when it is a pickle — converted once to
safetensors in our own cache, keyed by that sha256. Later runs use the converted
file without touching the network.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from esrgan_cli.errors import ChecksumError, ModelNotFoundError, first_line
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import LoadedWeights, load_weights, save_safetensors, sha256_of


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    revision: str
    sha256: str | None = None
    size: int | None = None

    def where(self) -> str:
        rev = self.revision[:7] if re.fullmatch(r"[0-9a-f]{40}", self.revision) else self.revision
        return f"{self.repo}/{self.filename}@{rev}"


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
    """The `weights/` folder: inside the installed package, or at the root of a source checkout."""
    try:
        installed = Path(str(resources.files("esrgan_cli.bundled")))
        if (installed / "registry.json").is_file():
            return installed
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "weights"


def cache_dir() -> Path:
    """Our own cache (converted checkpoints); the Hub's cache stays the Hub's."""
    if env := os.environ.get("ESRGAN_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "esrgan"


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
        models[name] = RegistryEntry(name, e.get("description", ""), source, RRDBConfig(**e["arch"]), e["license"])
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


def load_named(spec: str | None, registry: Registry | None = None) -> LoadedWeights:
    """The weights a `--model` value names (None: the registry's default), downloaded and converted as needed."""
    registry = registry or load_registry()
    return load_weights(resolve_model(spec if spec is not None else registry.default, registry).path)


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
    if isinstance(source, BundledFile):
        return True
    if source.sha256 and _converted_path(source.sha256).is_file():
        return True
    import huggingface_hub

    found = huggingface_hub.try_to_load_from_cache(source.repo, source.filename, revision=source.revision)
    return isinstance(found, str) and Path(found).is_file()


def _converted_path(sha256: str) -> Path:
    return cache_dir() / "converted" / f"{sha256}.safetensors"


def fetch(hub: HubFile, label: str, offline_hint: str = "pass --model with a local weights file") -> Path:
    """A Hub file, downloaded once into the Hugging Face cache and verified; legacy RRDBNet pickles come back as
    the safetensors file converted from them."""
    if hub.sha256 and (done := _converted_path(hub.sha256)).is_file():
        return done
    path = _download(hub, label, offline_hint)
    size = path.stat().st_size
    if hub.size is not None and size != hub.size:
        _discard(path)
        raise ChecksumError(
            f"{label}: downloaded {hub.where()} has {size:,} bytes, expected {hub.size:,}; "
            "the bad copy was removed, run again to re-download"
        )
    actual = sha256_of(path)
    if hub.sha256 and actual != hub.sha256:
        _discard(path)
        raise ChecksumError(
            f"{label}: sha256 of {hub.where()} is {actual}, expected {hub.sha256}; "
            "the bad copy was removed, run again to re-download"
        )
    if path.suffix == ".safetensors":
        return path
    target = _converted_path(actual)
    if not target.is_file():
        weights = load_weights(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {"esrgan.source": f"hf:{hub.repo}/{hub.filename}@{hub.revision}", "esrgan.source_sha256": actual}
        save_safetensors(weights.state_dict, weights.config, target, meta)
    return target


def _download(hub: HubFile, label: str, offline_hint: str) -> Path:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import logging as hf_logging

    # The Hub client logs a warning per connection retry; the error below says it all in one line.
    # (Its own API, not logging.getLogger: the library configures its logger lazily, resetting the level.)
    previous_level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return Path(huggingface_hub.hf_hub_download(hub.repo, hub.filename, revision=hub.revision))
    except hf_errors.LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{label} ({hub.where()}) is not in the Hugging Face cache and the Hub cannot be reached: "
            "run once with network access (or point HF_HOME at a cache that has it), "
            f"or {offline_hint}"
        ) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as e:
        raise ModelNotFoundError(f"{label}: {hub.where()} not found on the Hub ({type(e).__name__})") from None
    except hf_errors.EntryNotFoundError:
        raise ModelNotFoundError(f"{label}: no file {hub.filename!r} in {hub.repo}@{hub.revision}") from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise ModelNotFoundError(f"{label}: download of {hub.where()} failed: {first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(previous_level)


def _discard(path: Path) -> None:
    """Remove a bad download (the Hub cache keeps a symlink to a blob) so the next run fetches it again."""
    real = Path(os.path.realpath(path))
    for p in {path, real}:
        try:
            p.unlink()
        except OSError:
            pass
