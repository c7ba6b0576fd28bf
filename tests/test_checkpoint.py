"""Every layout and wrapper found in the wild reloads to the same network, detected from tensor shapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from esrgan_cli.errors import WeightsError
from esrgan_cli.model._layouts import canonicalize, detect_config
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import build_model, load_weights, save_safetensors

from conftest import tiny_model, to_esrgan_repo_layout, to_oldest_layout
from test_arch import CONFIGS

LAYOUTS = {
    "basicsr": lambda sd, c: sd,
    "esrgan-repo": lambda sd, c: to_esrgan_repo_layout(sd),
    "oldest": to_oldest_layout,
}
WRAPPERS = {
    "bare": lambda sd: sd,
    "params": lambda sd: {"params": sd},
    "state_dict+module": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
}


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.in_channels == c.out_channels], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_pth_round_trip_through_detection(config: RRDBConfig, layout: str, wrapper: str, tmp_path: Path) -> None:
    if layout == "esrgan-repo" and config.unshuffle > 1:
        pytest.skip("the ESRGAN repository layout has no pixel-unshuffle models")
    model = tiny_model(config, seed=3)
    obj = WRAPPERS[wrapper](LAYOUTS[layout](model.state_dict(), config))
    path = tmp_path / "m.pth"
    torch.save(obj, path)
    loaded = load_weights(path)
    assert loaded.config == config
    x = torch.rand(1, config.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(build_model(loaded)(x), model(x))


def test_params_ema_is_preferred_over_params() -> None:
    model = tiny_model()
    sd = model.state_dict()
    raw = {k: v + 1 for k, v in sd.items()}
    got, _ = canonicalize({"params": raw, "params_ema": sd})
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_safetensors_metadata_carries_the_architecture(tmp_path: Path) -> None:
    # in == 12 channels with x4 cannot be told from x2-by-unshuffle by shapes alone;
    # the metadata settles it.
    config = RRDBConfig(in_channels=12, out_channels=3, num_feat=8, num_block=1, num_grow=4, scale=4)
    model = tiny_model(config)
    path = tmp_path / "m.safetensors"
    save_safetensors(model.state_dict(), config, path, {"note": "x"})
    loaded = load_weights(path)
    assert loaded.config == config
    assert loaded.metadata["note"] == "x"
    assert detect_config(loaded.state_dict) != config  # what shapes alone would have guessed


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"params": {"conv_first.weight": torch.zeros(1)}, "x": Evil()}, path)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj,expected",
    [
        ({"fc.weight": torch.zeros(2, 2)}, "not an RRDBNet: expected keys like 'conv_first.weight'"),
        ([1, 2, 3], "expected a dictionary of tensors, found a list"),
        ({"epoch": 3, "optimizer": {"lr": 1}}, "expected RRDBNet weights, found a dictionary with keys"),
    ],
)
def test_non_rrdbnet_files_say_what_was_expected_and_found(obj: object, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_weights(path)


def test_truncated_or_mismatched_weights_name_the_first_difference(tmp_path: Path) -> None:
    sd = tiny_model().state_dict()
    del sd["body.0.rdb2.conv3.weight"]
    path = tmp_path / "cut.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing 'body.0.rdb2.conv3.weight'"):
        load_weights(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_garbage_files_get_a_weights_error(content: bytes, tmp_path: Path) -> None:
    for name in ("bad.pth", "bad.safetensors"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsError):
            load_weights(path)


def test_real_legacy_files_match_the_safetensors(shared: Path) -> None:
    """Must show 3: every legacy layout loads to the same weights; BasicSR's params_ema is the one used."""
    ref = load_weights(shared / "weights/realesrgan-x4plus-anime-6b.fp16.safetensors")
    assert ref.config == RRDBConfig(num_block=6)
    for path in sorted((shared / "weights/legacy").glob("*.pth")):
        got = load_weights(path)
        assert got.config == ref.config, path.name
        for key, value in ref.state_dict.items():
            # fp16 in both sources, widened to fp32 on load: identical values.
            assert torch.equal(got.state_dict[key], value), (path.name, key)
    raw = torch.load(shared / "weights/legacy/realesrgan-x4plus-anime-6b.basicsr.pth", weights_only=True)
    assert not torch.equal(raw["params"]["conv_last.bias"].float(), ref.state_dict["conv_last.bias"])
