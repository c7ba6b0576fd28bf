"""`--strength` / `load_model(..., strength=)`: a registry model's weights interpolated with its faithful twin's as it
loads. The endpoints reproduce the two models exactly; models without a twin are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, esrgan

import esrgan_cli
from esrgan_cli.errors import ModelNotFoundError, NoTwinError
from esrgan_cli.model.registry import load_named, load_registry, twin_of, weights_dir, with_twins

from conftest import random_image


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray((random_image(20, 24, seed=5) * 255).round().astype(np.uint8))


def test_the_registry_names_twins_only_where_the_gan_model_was_tuned_from_them() -> None:
    registry = load_registry()
    assert {name: registry.models[name].twin for name in with_twins(registry)} == {
        "compact-x4": "compact-psnr-x4", "esrgan-x4": "esrgan-psnr-x4"}
    # The default descends from compact-x4 through distillation on another degradation: no faithful twin ships.
    assert twin_of(None, registry) is None and twin_of("compact-real-x4", registry) is None
    assert twin_of("realesrgan-x4plus", registry) is None  # its PSNR stage (RealESRNet) is not in the registry
    assert twin_of("weights/compact-x4.fp16.safetensors", registry) is None  # a file has no twin
    listed = {m.name: m.twin for m in esrgan_cli.available_models()}
    assert listed["compact-x4"] == "compact-psnr-x4" and listed["compact-real-x4"] is None


def test_a_twin_must_be_a_registry_model_of_the_same_architecture(tmp_path: Path) -> None:
    data = json.loads((weights_dir() / "registry.json").read_text(encoding="utf-8"))
    for twin, match in (("no-such-model", "no-such-model"), ("esrgan-psnr-x4", "same architecture")):
        broken = json.loads(json.dumps(data))
        broken["models"]["compact-x4"]["twin"] = twin
        path = tmp_path / "registry.json"
        path.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(ModelNotFoundError, match=match):
            load_registry(path)


@pytest.mark.parametrize("strength, endpoint", [(1.0, "compact-x4"), (0.0, "compact-psnr-x4")])
def test_the_endpoints_are_the_two_models_exactly(photo: np.ndarray, strength: float, endpoint: str) -> None:
    blended = load_named("compact-x4", strength=strength)
    direct = load_named(endpoint)
    assert blended.state_dict.keys() == direct.state_dict.keys()
    assert all(torch.equal(blended.state_dict[k], direct.state_dict[k]) for k in direct.state_dict)
    out = esrgan_cli.load_model("compact-x4", device="cpu", strength=strength).upscale(photo)
    assert out.tobytes() == esrgan_cli.load_model(endpoint, device="cpu").upscale(photo).tobytes()


def test_a_strength_between_interpolates_every_weight_in_float32(photo: np.ndarray) -> None:
    gan, psnr = load_named("compact-x4"), load_named("compact-psnr-x4")
    half = load_named("compact-x4", strength=0.3)
    for key, value in half.state_dict.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, 0.3 * gan.state_dict[key] + 0.7 * psnr.state_dict[key]), key
    assert half.metadata["esrgan.strength"] == "0.3"
    outs = [esrgan_cli.load_model("compact-x4", device="cpu", strength=s).upscale(photo).astype(np.int16)
            for s in (0.0, 0.3, 1.0)]
    # Between the endpoints, and unlike either.
    assert np.abs(outs[1] - outs[0]).mean() > 0 and np.abs(outs[1] - outs[2]).mean() > 0
    assert np.abs(outs[1] - outs[0]).mean() < np.abs(outs[2] - outs[0]).mean()


def test_the_api_refuses_a_strength_without_a_twin(photo: np.ndarray) -> None:
    with pytest.raises(NoTwinError, match="compact-real-x4 has none .models with one: compact-x4, esrgan-x4"):
        esrgan_cli.load_model(device="cpu", strength=0.5)
    with pytest.raises(NoTwinError, match="weights given directly have none"):
        esrgan_cli.load_model(load_named("compact-x4"), device="cpu", strength=0.5)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="strength must be within"):
            esrgan_cli.load_model("compact-x4", device="cpu", strength=bad)


def test_upscale_strength_on_the_command_line(tmp_path: Path, photo: np.ndarray) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(photo).save(src)
    outputs = {}
    for name, args in (("gan", ["--model", "compact-x4"]), ("psnr", ["--model", "compact-psnr-x4"]),
                       ("s1", ["--model", "compact-x4", "--strength", "1"]),
                       ("s0", ["--model", "compact-x4", "--strength", "0"]),
                       ("s05", ["--model", "compact-x4", "--strength", "0.5"])):
        r = esrgan("upscale", src, "-o", tmp_path / f"{name}.png", "--device", "cpu", *args)
        assert r.returncode == 0, r.stderr
        outputs[name] = (tmp_path / f"{name}.png").read_bytes()
    assert outputs["s1"] == outputs["gan"] and outputs["s0"] == outputs["psnr"]
    assert outputs["s05"] not in (outputs["gan"], outputs["psnr"])
    assert "model compact-x4 at strength 0.5" in r.stderr

    refused = esrgan("upscale", src, "-o", tmp_path / "x.png", "--strength", "0.5")
    assert_one_line_error(refused, 2)
    assert refused.stderr == "esrgan: error: --strength needs a model with a faithful twin; compact-real-x4 has none\n"
    file_model = weights_dir() / "compact-x4.fp16.safetensors"
    assert_one_line_error(esrgan("upscale", src, "-o", tmp_path / "x.png", "--model", file_model, "--strength", "1"),
                          2, f"{file_model} has none")
    assert_one_line_error(esrgan("upscale", src, "-o", tmp_path / "x.png", "--model", "compact-x4", "--strength",
                                 "1.5"), 2, "1.5 is not in the range 0<=x<=1")
    assert not (tmp_path / "x.png").exists()


def test_a_batch_redoes_its_outputs_when_the_strength_changes(tmp_path: Path, photo: np.ndarray) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray(np.roll(photo, i, axis=1)).save(tmp_path / "in" / f"p{i}.png")
    out = tmp_path / "out"

    def run(strength: float | None) -> esrgan_cli.BatchSummary:
        return esrgan_cli.upscale_files([tmp_path / "in"], out, model="compact-x4", device="cpu",
                                        options=esrgan_cli.UpscaleOptions(strength=strength))

    first = run(0.25)
    assert (first.done, first.skipped) == (2, 0)
    bytes_025 = (out / "p0.png").read_bytes()
    again = run(0.25)
    assert (again.done, again.skipped) == (0, 2)
    other = run(0.75)
    assert (other.done, other.skipped) == (2, 0) and (out / "p0.png").read_bytes() != bytes_025
    plain = run(None)  # the model as it is: another output again
    assert (plain.done, plain.skipped) == (2, 0)
    plain_pixels = esrgan_cli.load_model("compact-x4", device="cpu").upscale(np.asarray(Image.open(tmp_path / "in" /
                                                                                           "p0.png")))
    assert np.array_equal(np.asarray(Image.open(out / "p0.png")), plain_pixels)
    journal = [json.loads(line) for line in (out / ".esrgan-journal.jsonl").read_text().splitlines()]
    assert [e["options"].get("strength") for e in journal if e["output"].endswith("p0.png")] == [0.25, 0.75, None]


def test_models_list_and_info_show_the_twin(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "ESRGAN_CACHE": str(tmp_path / "cache")}
    listed = json.loads(esrgan("models", "list", "--json", env=env).stdout)
    assert {m["name"]: m["twin"] for m in listed if m["twin"]} == {"compact-x4": "compact-psnr-x4",
                                                                  "esrgan-x4": "esrgan-psnr-x4"}
    table = esrgan("models", "list", env=env).stdout.splitlines()
    assert table[0].split()[:7] == ["name", "scale", "size", "license", "cached", "twin", "description"]
    row = next(line.split() for line in table if line.startswith("compact-x4 "))
    assert row[6] == "compact-psnr-x4"
    info = esrgan("info", "compact-x4")
    assert info.returncode == 0 and "twin: compact-psnr-x4" in info.stdout
    assert json.loads(esrgan("info", "compact-real-x4", "--json").stdout)["twin"] is None


def test_eval_scores_a_model_at_a_strength(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    Image.fromarray((random_image(48, 40, seed=8) * 255).round().astype(np.uint8)).save(tmp_path / "hr" / "a.png")
    base = ("--hr", tmp_path / "hr", "--perceptual-weights", "none", "--json", "--device", "cpu")
    twin = json.loads(esrgan("eval", "compact-psnr-x4", *base).stdout)
    at_zero = esrgan("eval", "compact-x4", "--strength", "0", *base)
    assert at_zero.returncode == 0, at_zero.stderr
    data = json.loads(at_zero.stdout)
    assert data["model"] == "compact-x4 at strength 0" and data["images"] == twin["images"]
    assert_one_line_error(esrgan("eval", "bicubic", "--strength", "0.5", *base), 2,
                          "--strength needs a model with a faithful twin; bicubic has none")
