"""Hub downloads: a file fetched once through `huggingface_hub.hf_hub_download` (the standard Hub cache, so
HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE are honoured), verified against its pinned size and sha256, and, when it is
a legacy pickle, converted once to safetensors in our own cache, keyed by that sha256. Later runs use the converted
file without touching the network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from esrgan_cli.errors import ChecksumError, ModelNotFoundError, first_line
from esrgan_cli.model.weights import convert_to_safetensors, sha256_of


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


def cache_dir() -> Path:
    """Our own cache (converted checkpoints); the Hub's cache stays the Hub's."""
    if env := os.environ.get("ESRGAN_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "esrgan"


def converted_path(sha256: str) -> Path:
    return cache_dir() / "converted" / f"{sha256}.safetensors"


def fetch(hub: HubFile, label: str, offline_hint: str = "pass --model with a local weights file") -> Path:
    """A Hub file, downloaded once into the Hugging Face cache and verified; legacy RRDBNet pickles come back as
    the safetensors file converted from them."""
    if hub.sha256 and (done := converted_path(hub.sha256)).is_file():
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
    target = converted_path(actual)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {"esrgan.source": f"hf:{hub.repo}/{hub.filename}@{hub.revision}", "esrgan.source_sha256": actual}
        convert_to_safetensors(path, target, meta)
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
