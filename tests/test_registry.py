"""Model resolution and downloads, with huggingface_hub faked at its boundary: no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hf_errors

from esrgan_cli.errors import ChecksumError, ModelNotFoundError
from esrgan_cli.model import hub as hub_module
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.hub import HubFile
from esrgan_cli.model.registry import load_registry, parse_hf_spec, resolve_model, weights_dir
from esrgan_cli.model.weights import load_weights, save_safetensors, sha256_of

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
    monkeypatch.setattr(hub_module, "hub_unreachable", lambda endpoint: None)  # the fake Hub always answers
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
    from esrgan_cli.model.weights import save_safetensors

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
    known = ("known models: compact-psnr-x4, compact-real-x4, compact-x4, esrgan-psnr-x4, esrgan-x4, "
             "realesrgan-x2plus, realesrgan-x4plus, realesrgan-x4plus-anime-6b")
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
    monkeypatch.setattr(hub_module, "hub_unreachable", lambda endpoint: None)
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


# Real-ESRGAN's RRDBNet models, each pinned to a Hub commit whose LFS pointers state these sha256s and sizes
# (weights/README.md cites them). The x4plus sha256 and size are also those of the official release file.
REAL_ESRGAN = {
    "realesrgan-x4plus": ("RealESRGAN_x4plus.pth", RRDBConfig(num_block=23, scale=4)),
    "realesrgan-x4plus-anime-6b": ("RealESRGAN_x4plus_anime_6B.pth", RRDBConfig(num_block=6, scale=4)),
    "realesrgan-x2plus": ("RealESRGAN_x2plus.pth", RRDBConfig(num_block=23, scale=2)),
}
OFFICIAL_X4PLUS = ("4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67_040_989)


def test_real_esrgan_entries_are_pinned_licensed_and_documented() -> None:
    registry = load_registry()
    card = (weights_dir() / "README.md").read_text(encoding="utf-8")
    for name, (filename, config) in REAL_ESRGAN.items():
        entry = registry.models[name]
        assert isinstance(entry.source, HubFile) and entry.source.filename == filename, name
        assert entry.license == "BSD-3-Clause" and entry.config == config, name
        for fact in (name, entry.source.repo, entry.source.revision, entry.source.sha256, f"{entry.size:,}"):
            assert str(fact) in card, (name, fact)
    x4plus = registry.models["realesrgan-x4plus"]
    assert (x4plus.source.sha256, x4plus.size) == OFFICIAL_X4PLUS
    assert registry.models["realesrgan-x2plus"].config.unshuffle == 2  # conv_first takes 12 planes


def test_registry_architectures_are_the_shared_real_esrgan_files(shared: Path) -> None:
    """The fp16 conversions in ../shared differ from the Hub files byte for byte but not in architecture."""
    registry = load_registry()
    for name in ("realesrgan-x4plus", "realesrgan-x4plus-anime-6b"):
        detected = load_weights(shared / "weights" / f"{name}.fp16.safetensors").config
        assert detected == registry.models[name].config, name


@pytest.mark.parametrize("name", sorted(REAL_ESRGAN))
def test_models_download_verifies_the_pinned_sha256(hub, tmp_path: Path, name: str) -> None:
    """A file of the right size but other bytes is refused by `esrgan models download` and removed."""
    from click.testing import CliRunner

    from esrgan_cli.cli import cli

    files, calls = hub
    entry = load_registry().models[name]
    assert isinstance(entry.source, HubFile) and entry.size
    impostor = tmp_path / "hub" / entry.source.filename
    impostor.parent.mkdir()
    with impostor.open("wb") as f:
        f.truncate(entry.size)  # zeros, sparse: the size check passes, the sha256 check must not
    files[f"{entry.source.repo}/{entry.source.filename}"] = impostor
    result = CliRunner().invoke(cli, ["models", "download", name])
    assert result.exit_code == 1
    assert calls == [(entry.source.repo, entry.source.filename, entry.source.revision)]
    assert f"sha256 of {entry.source.where()} is " in result.stderr
    assert f"expected {entry.source.sha256}" in result.stderr
    assert not impostor.exists() and not (tmp_path / "cache" / "converted").exists()


def test_an_x2_real_esrgan_checkpoint_downloads_converts_and_runs(hub, tmp_path: Path) -> None:
    """The x2plus layout: BasicSR keys in params_ema, conv_first on the 2×2 pixel-unshuffled image (12 planes)."""
    import numpy as np

    from esrgan_cli.upscale.device import choose_placement
    from esrgan_cli.upscale.upscaler import Upscaler

    files, _ = hub
    model = tiny_model(RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=2))
    assert model.state_dict()["conv_first.weight"].shape[1] == 12
    pth = tmp_path / "hub" / "RealESRGAN_x2plus.pth"
    pth.parent.mkdir()
    torch.save({"params_ema": model.state_dict()}, pth)
    files["someone/models/m.pth"] = pth
    arch = {"num_feat": 8, "num_block": 1, "num_grow": 4, "scale": 2}
    registry = load_registry(make_registry(tmp_path, pth, arch=arch, license="BSD-3-Clause"))
    weights = load_weights(resolve_model("tiny", registry).path)
    assert weights.config == registry.models["tiny"].config == RRDBConfig(num_feat=8, num_block=1, num_grow=4,
                                                                           scale=2, unshuffle=2)
    out = Upscaler(weights, choose_placement("cpu", "fp32")).upscale(np.zeros((10, 14, 3), np.uint8))
    assert out.shape == (20, 28, 3)


def test_models_list_shows_the_real_esrgan_entries_with_their_license(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from esrgan_cli.cli import cli

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ESRGAN_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:-1]}
    assert rows["realesrgan-x4plus"][1:6] == ["x4", "67", "MB", "BSD-3-Clause", "no"]
    assert rows["realesrgan-x4plus-anime-6b"][1:6] == ["x4", "18", "MB", "BSD-3-Clause", "no"]
    assert rows["realesrgan-x2plus"][1:6] == ["x2", "67", "MB", "BSD-3-Clause", "no"]
    header = result.stdout.splitlines()[0]
    for line in result.stdout.splitlines()[1:-1]:  # the columns line up, however long the name
        assert line.index(" x") + 1 == header.index("scale") + 3, line


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_models_list_imports_no_torch(extra: list[str]) -> None:
    """Listing the registry needs no torch (it took 2-4 s to import; the list now answers in a tenth of that):
    `python -X importtime` names every module the command imported."""
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "esrgan_cli", "models", "list", *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "compact-real-x4" in r.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "esrgan_cli.model.registry" in imported  # the list did read the registry
    assert not {m for m in imported if m.split(".")[0] in ("torch", "safetensors")}
