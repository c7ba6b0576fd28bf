"""The Python API: the README's example, lazy imports, images and arrays of every kind, TTA through the one engine,
and out-of-memory as a one-line failure."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import esrgan

import esrgan_cli
from esrgan_cli.model.arch import RRDBConfig
from esrgan_cli.model.weights import LoadedWeights
from esrgan_cli.upscale.device import Placement
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import ROOT, padded_forward, psnr, random_image, tiny_model


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"no python block after <!-- {marker} --> in README.md"
    return match.group(1)


def test_readme_python_api_example_runs() -> None:
    proc = subprocess.run([sys.executable, "-c", readme_block("python-api")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("['compact-real-x4'") and "no-such-model" in lines[-1]


def test_readme_batch_example_runs_and_resumes(tmp_path: Path) -> None:
    """The README's `upscale_files` example, run twice in a folder holding a copy of examples/: the first run does
    every image, the second skips them all (the journal), and the outputs are what `esrgan upscale` writes."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    runs = [subprocess.run([sys.executable, "-c", readme_block("python-batch")], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600, env=env) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    images = sorted(p.name for p in (ROOT / "examples").iterdir() if p.suffix == ".png")
    first, second = (proc.stdout.strip().splitlines() for proc in runs)
    assert sorted(first[:-1]) == [f"done: {name}" for name in images]
    assert first[-1] == f"{len(images)} 0 0" and second == [f"0 {len(images)} 0"]
    report = json.loads((tmp_path / "examples_x4/report.json").read_text())
    assert report["model"] == "compact-real-x4" and len(report["skipped"]) == len(images)
    cli = tmp_path / "cli"
    proc = esrgan("upscale", str(tmp_path / "examples"), "-o", str(cli), "--model", "compact-real-x4", "--device",
                  "cpu", "--outscale", "2", "--format", "png", "-q")
    assert proc.returncode == 0, proc.stderr
    for name in images:
        assert (cli / name).read_bytes() == (tmp_path / "examples_x4" / name).read_bytes()


def test_import_is_lazy_and_the_public_names_resolve() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import esrgan_cli"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "esrgan_cli" in imported
    heavy = {m for m in imported if m.split(".")[0] in ("torch", "numpy", "PIL", "safetensors", "huggingface_hub")}
    assert not heavy, sorted(heavy)[:5]
    for name in esrgan_cli.__all__:
        assert getattr(esrgan_cli, name) is not None
    assert (Path(esrgan_cli.__file__).parent / "py.typed").is_file()


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    model = tiny_model()
    return esrgan_cli.load_model(model.state_dict(), device="cpu")


@pytest.mark.parametrize("shape", [(9, 7), (9, 7, 1), (9, 7, 2), (9, 7, 3), (9, 7, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_arrays_keep_their_type_and_channels(upscaler: Upscaler, shape: tuple[int, ...], dtype: type) -> None:
    unit = random_image(9, 7, seed=3)[..., :1].repeat(4, axis=2)
    unit[..., 1:3] = random_image(9, 7, seed=4)[..., :2]
    unit = unit[..., : shape[2]] if len(shape) == 3 else unit[..., 0]
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    image = np.rint(unit * top).astype(dtype) if top != 1.0 else unit.astype(dtype)
    out = upscaler.upscale(image)
    assert out.shape == (36, 28, *shape[2:])
    assert out.dtype == dtype
    # The same values as float32 agree to within the rounding to the integer type (twice for gray: colour, luma).
    reference = upscaler.upscale(image.astype(np.float32) / np.float32(top))
    assert reference.dtype == np.float32 and reference.shape == out.shape
    assert np.abs(out.astype(np.float32) / top - reference).max() <= 1.0 / top + 1e-6
    if len(shape) == 3 and shape[2] in (2, 4):  # alpha is resized, not run through the model
        assert abs(float(out[..., -1].astype(np.float32).mean()) / top - float(unit[..., -1].mean())) < 0.02


def test_arrays_are_checked(upscaler: Upscaler) -> None:
    with pytest.raises(TypeError, match="int32"):
        upscaler.upscale(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="shape"):
        upscaler.upscale(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        upscaler.upscale(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="PIL"):
        upscaler.upscale("photo.png")  # type: ignore[type-var]


def refused(error: type[Exception], fix: str, call: Callable[[], object]) -> None:
    """`call` raises exactly `error`, with one line that says how to fix the call."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert type(info.value) is error and "\n" not in message and fix in message, message


def test_a_float_array_in_0_255_is_refused_not_white(upscaler: Upscaler) -> None:
    image = random_image(9, 7, seed=3)
    pixels = np.rint(image * 255).astype(np.float32)  # what np.asarray(photo, np.float32) gives
    pixels[0, 0] = 255
    refused(ValueError, "float images must be in [0, 1], got values up to 255; divide by 255",
            lambda: upscaler.upscale(pixels))
    refused(ValueError, "divide by 65535", lambda: upscaler.upscale(image * 65535))
    refused(ValueError, "(x + 1) / 2", lambda: upscaler.upscale(image * 2 - 1))
    # Float rounding just outside [0, 1] is clipped, as before: 1e-7 past 1 in float32, one float16 step past 1.
    nudged = image.copy()
    nudged[0, 0] = [1 + 1e-7, -1e-7, 1]
    assert np.array_equal(upscaler.upscale(nudged), upscaler.upscale(np.clip(nudged, 0, 1)))
    half = image.astype(np.float16)
    half[0, 0, 0] = np.nextafter(np.float16(1), np.float16(2))
    assert upscaler.upscale(half).dtype == np.float16


def test_outscale_must_be_above_0(upscaler: Upscaler) -> None:
    image = random_image(9, 7, seed=3)
    refused(ValueError, "outscale=0 must be a finite number above 0", lambda: upscaler.upscale(image, outscale=0))
    refused(ValueError, "outscale=-2 must be a finite number above 0", lambda: upscaler.upscale(image, outscale=-2))
    refused(ValueError, "finite number above 0", lambda: upscaler.upscale(image, outscale=float("inf")))
    refused(ValueError, "finite number above 0", lambda: upscaler.upscale(image, outscale=float("nan")))
    refused(TypeError, "outscale must be None or a number above 0, not str",
            lambda: upscaler.upscale(image, outscale="2"))  # type: ignore[arg-type]
    assert upscaler.upscale(image, outscale=np.float32(0.5)).shape == (4, 4, 3)  # round(3.5) is 4, like the CLI


def test_overlap_must_be_0_or_more(upscaler: Upscaler) -> None:
    image = random_image(9, 7, seed=3)
    refused(ValueError, "overlap=-1 is negative: use 0 or more", lambda: upscaler.upscale(image, overlap=-1))
    refused(TypeError, "overlap must be an int of 0 or more, not float 1.5",
            lambda: upscaler.upscale(image, overlap=1.5))  # type: ignore[arg-type]
    assert upscaler.upscale(image, overlap=0).shape == (36, 28, 3)


def test_tile_auto_is_none_and_other_tiles_follow_the_command_line(upscaler: Upscaler) -> None:
    image = random_image(40, 30, seed=3)
    assert np.array_equal(upscaler.upscale(image, tile="auto"), upscaler.upscale(image, tile=None))
    refused(ValueError, "tile=8 is too small: use 0 (whole image), 'auto', or at least 16",
            lambda: upscaler.upscale(image, tile=8))
    refused(TypeError, "tile must be None, 'auto', 0 (whole image) or an int of at least 16, not bool",
            lambda: upscaler.upscale(image, tile=True))
    refused(TypeError, "not str '64'", lambda: upscaler.upscale(image, tile="64"))  # type: ignore[arg-type]
    refused(TypeError, "tta must be True or False, not str",
            lambda: upscaler.upscale(image, tta="yes"))  # type: ignore[arg-type]
    assert np.array_equal(upscaler.upscale(image, tile=np.int64(16)), upscaler.upscale(image, tile=16))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("channels", [3, 4])
def test_float16_and_float64_arrays_come_back_in_their_type(upscaler: Upscaler, dtype: type, channels: int) -> None:
    """The same values as the float32 result, through the model and alpha's resize, and through outscale's Lanczos."""
    image = np.concatenate([random_image(9, 7, seed=3), random_image(9, 7, seed=4)[..., :1]], axis=2)[..., :channels]
    image = image.astype(dtype)
    for outscale in (None, 2.5):
        out = upscaler.upscale(image, outscale=outscale)
        reference = upscaler.upscale(image.astype(np.float32), outscale=outscale)
        assert out.dtype == dtype and out.shape == reference.shape
        # float64 holds every float32 exactly; float16 rounds to its nearest, half a step (2**-12 below 1) at most.
        tolerance = 2.0**-12 if dtype == np.float16 else 0.0
        assert np.abs(out.astype(np.float32) - reference).max() <= tolerance


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16", "CMYK"])
def test_pil_images_keep_mode_and_metadata(upscaler: Upscaler, mode: str) -> None:
    rgb = Image.fromarray((random_image(10, 8) * 255).astype(np.uint8))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    image.info["icc_profile"] = b"fake profile"
    exif = Image.Exif()
    exif[0x010E] = "a description"
    image.info["exif"] = exif.tobytes()
    out = upscaler.upscale(image, outscale=2)
    assert out.mode == ("I;16" if mode == "I;16" else mode) and out.size == (16, 20)
    assert out.info["icc_profile"] == b"fake profile" and out.info["exif"] == exif.tobytes()
    if mode == "I;16":
        assert np.asarray(out).max() > 255  # still 16 bits deep


def test_pil_path_matches_the_command_line(upscaler: Upscaler, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray((random_image(12, 10, seed=7) * 255).astype(np.uint8)).save(src)
    weights = tmp_path / "tiny.safetensors"
    from esrgan_cli.model.weights import save_safetensors

    model = tiny_model()
    save_safetensors(model.state_dict(), model.config, weights)
    proc = esrgan("upscale", src, "-o", tmp_path / "out.png", "--model", weights, "-q")
    assert proc.returncode == 0, proc.stderr
    with Image.open(src) as im:
        via_api = np.asarray(upscaler.upscale(im))
    assert np.array_equal(via_api, np.asarray(Image.open(tmp_path / "out.png")))


def test_tta_through_staged_blocks_equals_the_untiled_ensemble() -> None:
    """With context wider than the tiny model's receptive field, tiled TTA is the untiled TTA exactly."""
    model = tiny_model(RRDBConfig(num_feat=8, num_block=1, num_grow=4))
    up = Upscaler(LoadedWeights(model.state_dict(), model.config, {}, Path("t"), torch.float32),
                  Placement(torch.device("cpu"), torch.float32))
    image = random_image(120, 100, seed=2)
    whole = np.zeros((480, 400, 3), np.float32)
    assert up.upscale_into(image, whole, 0, 0, tta=True) == 1
    expected = np.zeros_like(whole)
    for turns in range(4):
        for flip in (False, True):
            x = np.rot90(image, turns)
            x = x[:, ::-1] if flip else x
            y = padded_forward(up, np.ascontiguousarray(x))
            expected += np.rot90(y[:, ::-1] if flip else y, -turns)
    assert np.abs(whole - expected / 8).max() < 1e-5
    # A random net is not equivariant: the ensemble changes the output.
    assert psnr(whole, padded_forward(up, image)) < 60
    tiled = np.zeros_like(whole)
    blocks = up.upscale_into(image, tiled, 16, 24, tta=True)
    assert blocks > 1 and np.abs(tiled - whole).max() < 1e-5


def test_cli_tta_with_tile_64_equals_untiled_tta_on_200_pixels(tmp_path: Path) -> None:
    """The issue's check, with the bundled default model on a 200×200 photo."""
    src = tmp_path / "photo.png"
    Image.open(ROOT / "examples/cottage.png").resize((200, 200), Image.Resampling.LANCZOS).save(src)
    outs = {}
    for tile in ("64", "0"):
        out = tmp_path / f"tta_{tile}.png"
        proc = esrgan("upscale", src, "-o", out, "--tta", "--tile", tile, "-q", timeout=600)
        assert proc.returncode == 0, proc.stderr
        outs[tile] = np.asarray(Image.open(out), np.float32) / 255
    db = psnr(outs["64"], outs["0"])
    print(f"\n--tta --tile 64 vs --tta --tile 0, 200×200: {db:.1f} dB")
    assert db >= 45


# A CLI run whose model runs out of memory at every tile size on images that are nearly white, as CUDA would.
OOM_SCRIPT = """
import sys, torch
from esrgan_cli.model.arch import RRDBNet
real = RRDBNet.trunk
def trunk(self, x):
    if float(x.float().mean()) > 0.9:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return real(self, x)
RRDBNet.trunk = trunk
from esrgan_cli.cli import main
sys.argv = ["esrgan", *sys.argv[1:]]
main()
"""


def run_oom(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", OOM_SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_out_of_memory_at_every_tile_size_fails_one_file_in_one_line(tmp_path: Path, tiny_weights: Path) -> None:
    white = tmp_path / "in" / "white.png"
    white.parent.mkdir()
    Image.new("RGB", (40, 30), "white").save(white)
    for i in range(2):
        Image.fromarray((random_image(20, 16, seed=i) * 255 * 0.8).astype(np.uint8)).save(tmp_path / "in" / f"{i}.png")
    single = run_oom("upscale", white, "-o", tmp_path / "white_x4.png", "--model", tiny_weights, "--tile", "auto")
    assert single.returncode == 1, single.stderr
    lines = single.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"esrgan: error: {white}: out of memory"), single.stderr
    assert not any(p.name.startswith(("white_x4", ".white_x4")) for p in tmp_path.iterdir())

    report = tmp_path / "report.json"
    batch = run_oom("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", tiny_weights, "--report", report)
    assert batch.returncode == 1, batch.stderr
    assert "Traceback" not in batch.stderr
    failed = [line for line in batch.stderr.splitlines() if "failed:" in line]
    assert len(failed) == 1 and f"failed: {white}: out of memory" in failed[0], batch.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".esrgan-journal.jsonl", ".esrgan.lock",
                                                                    "0.png", "1.png"]
    data = json.loads(report.read_text())
    assert [Path(f["input"]).name for f in data["failed"]] == ["white.png"] and len(data["done"]) == 2
    assert io.BytesIO((tmp_path / "out" / "0.png").read_bytes()).getbuffer().nbytes > 0
