"""Hub downloads: a file fetched once through `huggingface_hub.hf_hub_download` (the standard Hub cache, so
HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE are honoured), verified against its pinned size and sha256, and, when it is
a legacy pickle, converted once to safetensors in our own cache, keyed by that sha256. Later runs use the converted
file without touching the network.

Before the Hub client is called, the listener (`on_download`) hears what is about to be fetched, and a short probe
of the endpoint (`HF_ENDPOINT`) decides whether the network answers at all: without it, an unreachable Hub cost
about 26 s of silence in the client's retries before the same failure. Files already in a cache and
`HF_HUB_OFFLINE` skip both.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from esrgan_cli.errors import ChecksumError, ModelNotFoundError, first_line
from esrgan_cli.files import sha256_of

# How long the endpoint has to answer one HEAD request (name lookup included) before the download is given up.
PROBE_TIMEOUT_S = 3.0
# A failed probe is believed for this long, so `models download a b c` waits once, not three times.
_PROBE_MEMORY_S = 60.0
_failed_probes: dict[str, tuple[float, str]] = {}


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


def _is_commit(revision: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{40}", revision) is not None


@dataclass(frozen=True)
class Download:
    """What is about to be fetched from the Hub, told before any network wait."""

    label: str  # what needs it, e.g. "model 'esrgan-x4'"
    file: HubFile
    endpoint: str  # HF_ENDPOINT, or the Hub's own address

    @property
    def url(self) -> str:
        """Where a browser or curl gets the same file (the Hub's resolve address)."""
        return f"{self.endpoint}/{self.file.repo}/resolve/{self.file.revision}/{self.file.filename}"


DownloadListener = Callable[[Download], None]
_listener: ContextVar[DownloadListener | None] = ContextVar("esrgan_download_listener", default=None)


@contextmanager
def on_download(listener: DownloadListener) -> Iterator[None]:
    """Within the block, every Hub download is told to `listener` first (the command line prints it): a download
    can happen deep inside a batch, a training run or an evaluation, none of which should carry the callback."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def cache_dir() -> Path:
    """Our own cache (converted checkpoints); the Hub's cache stays the Hub's."""
    if env := os.environ.get("ESRGAN_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "esrgan"


def converted_path(sha256: str) -> Path:
    return cache_dir() / "converted" / f"{sha256}.safetensors"


def cached_copy(hub: HubFile) -> Path | None:
    """The file in the Hugging Face cache, found without the network or the Hub client (whose import alone takes
    longer than `esrgan models list` may): the snapshot of the pinned commit, or of the commit a branch or tag
    pointed to when it was last fetched. The layout is the Hub cache's documented one."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / constants.REPO_ID_SEPARATOR.join(["models", *hub.repo.split("/")])
    revision = hub.revision
    if not _is_commit(revision):
        try:
            revision = (folder / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            return None
    path = folder / "snapshots" / revision / hub.filename
    return path if path.is_file() else None


def is_local(hub: HubFile) -> bool:
    """True when the file can be had without the network: converted by us, or in the Hugging Face cache."""
    return bool(hub.sha256 and converted_path(hub.sha256).is_file()) or cached_copy(hub) is not None


def fetch(hub: HubFile, label: str, offline_hint: str = "pass --model with a local weights file",
          announce: DownloadListener | None = None) -> Path:
    """A Hub file, downloaded once into the Hugging Face cache and verified; legacy RRDBNet pickles come back as
    the safetensors file converted from them. `announce` (else the `on_download` listener) hears of a download
    before it starts."""
    if hub.sha256 and (done := converted_path(hub.sha256)).is_file():
        return done
    # A pinned commit in the cache is what the Hub client would return; it is verified below all the same.
    cached = cached_copy(hub) if _is_commit(hub.revision) else None
    path = cached or _download(hub, label, offline_hint, announce or _listener.get())
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
        from esrgan_cli.model.weights import convert_to_safetensors

        convert_to_safetensors(path, target, meta)
    return target


def _download(hub: HubFile, label: str, offline_hint: str, announce: DownloadListener | None) -> Path:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        found = cached_copy(hub)
        if found is None:
            raise ModelNotFoundError(
                f"{label} ({hub.where()}) is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"unset it to download the file, or {offline_hint}"
            )
        return found
    event = Download(label, hub, constants.ENDPOINT)
    if announce is not None:
        announce(event)
    if (reason := hub_unreachable(event.endpoint)) is not None:
        if (found := cached_copy(hub)) is not None:
            return found  # a branch's last-fetched commit, as the Hub client itself falls back to
        raise ModelNotFoundError(
            f"{label}: the Hub at {event.endpoint} did not answer ({reason}), so {hub.where()} cannot be "
            f"downloaded; set HF_HUB_OFFLINE=1 to use only cached files without waiting, or download {event.url} "
            f"where the Hub is reachable and {offline_hint}"
        )
    return _hub_download(hub, label, offline_hint)


def hub_unreachable(endpoint: str) -> str | None:
    """Why `endpoint` cannot be reached (no HTTP answer within PROBE_TIMEOUT_S), or None when it answers, with any
    status: the Hub client then does the real work and reports its own errors. The request runs in a thread so
    that a name lookup that hangs (no socket timeout covers it) is bounded too."""
    now = time.monotonic()
    if (failed := _failed_probes.get(endpoint)) is not None and now - failed[0] < _PROBE_MEMORY_S:
        return failed[1]
    answers: list[str | None] = []
    probe = threading.Thread(target=lambda: answers.append(_ask(endpoint)), name="esrgan-hub-probe", daemon=True)
    probe.start()
    probe.join(PROBE_TIMEOUT_S + 0.5)
    reason = answers[0] if answers else f"no answer in {PROBE_TIMEOUT_S:g} s"
    if reason is not None:
        _failed_probes[endpoint] = (now, reason)
    return reason


def _ask(endpoint: str) -> str | None:
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/", method="HEAD", headers={"User-Agent": "esrgan"})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):  # noqa: S310 (the Hub's address, http(s))
            return None
    except urllib.error.HTTPError:
        return None  # an answer, whatever its status
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return None  # something answered; whether its certificate is good is the Hub client's call
        return _reason(e.reason)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return _reason(e)


def _reason(error: BaseException | str) -> str:
    """`[Errno 111] Connection refused` → `connection refused`; a timeout → `timed out after 3 s`."""
    if isinstance(error, TimeoutError):
        return f"timed out after {PROBE_TIMEOUT_S:g} s"
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = first_line(error) if isinstance(error, BaseException) else str(error)
    return text[:1].lower() + text[1:]


def _hub_download(hub: HubFile, label: str, offline_hint: str) -> Path:
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
