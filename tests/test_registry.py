"""Model resolution and downloads, with huggingface_hub faked at its boundary: no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hf_errors

from esrgan_cli.arch import RRDBConfig
from esrgan_cli.errors import ChecksumError, ModelNotFoundError
from esrgan_cli.registry import HubFile, load_registry, parse_hf_spec, resolve_model, weights_dir
from esrgan_cli.weights import load_weights, save_safetensors, sha256_of

from conftest import tiny_model, to_esrgan_repo_layout

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake Hub: files in a folder, calls recorded; our cache in tmp."""
    monkeypatch.setenv("ESRGAN_CACHE", str(tmp_path / "cache"))
    files: dict[str, Path] = {}
    calls: list[tuple[str, str, str | None]] = []

    def fake_download(repo_id: str, filename: str, *, revision: str | None = None, **kw: object) -> str:
        calls.append((repo_id, filename, revision))
        key = f"{repo_id}/{filename}"
        if key not in files:
            raise hf_errors.LocalEntryNotFoundError("offline and not cached")
        return str(files[key])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return files, calls


def make_registry(tmp_path: Path, path: Path, **override: object) -> Path:
    entry = {
        "description": "test", "repo": "someone/models", "revision": REV, "filename": "m.pth",
        "sha256": sha256_of(path), "size": path.stat().st_size, "license": "MIT",
        "arch": {"num_feat": 8, "num_block": 1, "num_grow": 4, "scale": 4},
    }
    entry.update(override)
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"default": "tiny", "models": {"tiny": entry}}))
    return reg


@pytest.fixture
def pth(tmp_path: Path) -> Path:
    path = tmp_path / "hub" / "m.pth"
    path.parent.mkdir()
    torch.save(to_esrgan_repo_layout(tiny_model().state_dict()), path)
    return path


def test_download_is_verified_converted_once_and_then_offline(hub, pth: Path, tmp_path: Path) -> None:
    files, calls = hub
    files["someone/models/m.pth"] = pth
    registry = load_registry(make_registry(tmp_path, pth))
    first = resolve_model("tiny", registry)
    assert calls == [("someone/models", "m.pth", REV)]
    assert first.path.suffix == ".safetensors" and first.path.is_relative_to(tmp_path / "cache")
    loaded = load_weights(first.path)
    assert loaded.config == RRDBConfig(num_feat=8, num_block=1, num_grow=4)
    assert loaded.metadata["esrgan.source_sha256"] == sha256_of(pth)
    files.clear()  # the Hub is gone: the converted copy is enough
    assert resolve_model("tiny", registry).path == first.path
    assert len(calls) == 1


def test_checksum_mismatch_is_refused_and_the_bad_copy_removed(hub, pth: Path, tmp_path: Path) -> None:
    files, _ = hub
    files["someone/models/m.pth"] = pth
    registry = load_registry(make_registry(tmp_path, pth, sha256="0" * 64))
    with pytest.raises(ChecksumError, match="sha256 of someone/models/m.pth@0123456 is"):
        resolve_model("tiny", registry)
    assert not pth.exists()
    assert not (tmp_path / "cache" / "converted").exists()


def test_size_mismatch_is_refused(hub, pth: Path, tmp_path: Path) -> None:
    files, _ = hub
    files["someone/models/m.pth"] = pth
    registry = load_registry(make_registry(tmp_path, pth, size=12))
    with pytest.raises(ChecksumError, match="expected 12"):
        resolve_model("tiny", registry)


def test_offline_and_not_cached_names_model_location_and_fix(hub, pth: Path, tmp_path: Path) -> None:
    registry = load_registry(make_registry(tmp_path, pth))
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("tiny", registry)
    message = str(e.value)
    assert "'tiny'" in message and "someone/models/m.pth@0123456" in message and "--model" in message
    assert "\n" not in message


def test_hf_spec_downloads_the_named_file(hub, tmp_path: Path) -> None:
    files, calls = hub
    st = tmp_path / "hub" / "x.safetensors"
    st.parent.mkdir()
    from esrgan_cli.weights import save_safetensors

    model = tiny_model()
    save_safetensors(model.state_dict(), model.config, st)
    files["o/r/sub/x.safetensors"] = st
    got = resolve_model("hf:o/r/sub/x.safetensors@v1.0")
    assert got.path == st and calls == [("o/r", "sub/x.safetensors", "v1.0")]


@pytest.mark.parametrize(
    "spec,repo,filename,rev",
    [("hf:a/b/c.pth", "a/b", "c.pth", "main"), ("hf:a/b/d/e.safetensors@" + REV, "a/b", "d/e.safetensors", REV)],
)
def test_parse_hf_spec(spec: str, repo: str, filename: str, rev: str) -> None:
    hub_file = parse_hf_spec(spec)
    assert (hub_file.repo, hub_file.filename, hub_file.revision) == (repo, filename, rev)


@pytest.mark.parametrize("spec", ["hf:a", "hf:a/b", "hf:a/b/", "hf:a/b/c@"])
def test_bad_hf_spec(spec: str) -> None:
    with pytest.raises(ModelNotFoundError, match="expected hf:OWNER/REPO/FILE"):
        parse_hf_spec(spec)


def test_unknown_name_lists_known_models() -> None:
    known = "known models: compact-psnr-x4, compact-x4, esrgan-psnr-x4, esrgan-x4"
    with pytest.raises(ModelNotFoundError, match=known):
        resolve_model("no-such-model")


def test_shipped_registry_is_pinned_and_complete() -> None:
    registry = load_registry()
    assert (weights_dir() / "registry.json").is_file()
    assert registry.default in registry.models
    assert {"esrgan-x4", "esrgan-psnr-x4"} <= set(registry.models)
    for entry in registry.models.values():
        if isinstance(entry.source, HubFile):
            assert re.fullmatch(r"[0-9a-f]{40}", entry.source.revision), entry.name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.source.sha256 or ""), entry.name
        assert entry.size and entry.size > 0 and entry.license
    paper = registry.models["esrgan-x4"]
    assert paper.source.sha256 == "65fece06e1ccb48853242aa972bdf00ad07a7dd8938d2dcbdf4221b59f6372ce"
    assert paper.config == RRDBConfig()


def test_hub_client_warnings_are_quiet_during_download_and_restored(
    pth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub.utils import logging as hf_logging

    monkeypatch.setenv("ESRGAN_CACHE", str(tmp_path / "cache"))
    levels: list[int] = []

    def retrying_download(repo_id: str, filename: str, **kw: object) -> str:
        levels.append(hf_logging.get_verbosity())
        hf_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise hf_errors.LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retrying_download)
    before = hf_logging.get_verbosity()
    with pytest.raises(ModelNotFoundError):
        resolve_model("tiny", load_registry(make_registry(tmp_path, pth)))
    assert levels == [hf_logging.ERROR]
    assert hf_logging.get_verbosity() == before
    assert "Retrying" not in capsys.readouterr().err


def bundled_registry(tmp_path: Path, **override: object) -> Path:
    """A registry whose only model is a file beside it, as the shipped weights/ folder is."""
    model = tiny_model()
    weights = tmp_path / "tiny.fp16.safetensors"
    save_safetensors(model.state_dict(), model.config, weights, dtype=torch.float16)
    entry = {"description": "bundled", "file": weights.name, "sha256": sha256_of(weights),
             "size": weights.stat().st_size, "license": "Apache-2.0",
             "arch": {"num_feat": 8, "num_block": 1, "num_grow": 4, "scale": 4}}
    entry.update(override)
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"default": "tiny", "models": {"tiny": entry}}))
    return reg


def test_bundled_model_resolves_without_the_hub(tmp_path: Path, hub) -> None:
    files, calls = hub
    registry = load_registry(bundled_registry(tmp_path))
    resolved = resolve_model("tiny", registry)
    assert resolved.path == tmp_path / "tiny.fp16.safetensors"
    assert calls == []  # never asked the Hub
    assert load_weights(resolved.path).config == RRDBConfig(num_feat=8, num_block=1, num_grow=4)


def test_damaged_or_missing_bundled_model_is_a_clear_error(tmp_path: Path) -> None:
    reg = bundled_registry(tmp_path, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="reinstall esrgan"):
        resolve_model("tiny", load_registry(reg))
    (tmp_path / "tiny.fp16.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="missing from this installation"):
        resolve_model("tiny", load_registry(reg))
