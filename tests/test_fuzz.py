"""Fuzz: images of every Pillow mode, odd sizes, EXIF orientations, ICC profiles, and malformed files derived
from them, in every container. Single and batch runs never exit other than 0/1/2/130, never print a traceback or
more than one note and one other line per file, and never leave a temp file. `pytest -s` prints the case count."""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms
from test_cli import esrgan

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F", "La",
         "RGBa"]
CONTAINERS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tif": "TIFF", "bmp": "BMP", "gif": "GIF"}
SIDES = [1, 2, 3, 5, 7, 13, 17, 31]
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
CASES = {"single": 0, "batch": 0}


def make_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**20), 2**20, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray((rng.random((h, w)) * 2000 - 1000).astype(np.float32), mode="F")
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    try:
        return rgba.convert(mode)
    except ValueError:
        return rgba.convert("RGB").convert(mode)


def encode(img: Image.Image, fmt: str, orientation: int | None, icc: bool,
           more: tuple[Image.Image, ...] = ()) -> bytes:
    """The image in `fmt`, with EXIF orientation and ICC where given, and `more` frames or pages after it where the
    container holds several; modes the container refuses become RGB(A)."""
    params: dict[str, object] = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    if icc and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        params["icc_profile"] = SRGB
    if more and fmt in ("PNG", "WEBP", "TIFF", "GIF"):
        params.update(save_all=True, duration=[30 + 10 * i for i in range(len(more) + 1)], loop=0)
    for target in (None, "RGBA", "RGB"):
        buf = io.BytesIO()
        try:
            frames = [as_mode(im, target) for im in (img, *more)]
            if "save_all" in params:
                params["append_images"] = frames[1:]
            frames[0].save(buf, fmt, **params)
            return buf.getvalue()
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise AssertionError(f"cannot save {img.mode} as {fmt}")


def as_mode(img: Image.Image, target: str | None) -> Image.Image:
    if target is None:
        return img
    candidate = img.convert("RGBA") if img.mode not in ("La", "RGBa") else Image.new(target, img.size, "gray")
    return candidate.convert("RGB") if target == "RGB" else candidate


def mutate(data: bytes, kind: str, where: float, value: int) -> bytes:
    b = bytearray(data)
    i = min(len(b) - 1, int(where * len(b)))
    if kind == "truncate":
        return bytes(b[: max(1, i)])
    if kind == "bitflip":
        b[i] ^= 1 << (value % 8)
    elif kind == "header":  # a header field set to an extreme
        j = min(len(b) - 4, 8 + int(where * 24))
        b[j : j + 4] = (b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff")[value % 3]
    elif kind == "zero-run":
        b[i : i + 64] = bytes(len(b[i : i + 64]))
    return bytes(b)


case = st.fixed_dictionaries({
    "mode": st.sampled_from(MODES),
    "size": st.tuples(st.sampled_from(SIDES), st.sampled_from(SIDES)),
    "container": st.sampled_from(sorted(CONTAINERS)),
    "orientation": st.one_of(st.none(), st.integers(1, 8)),
    "icc": st.booleans(),
    "damage": st.sampled_from(["none", "none", "truncate", "bitflip", "header", "zero-run"]),
    "where": st.floats(0, 1),
    "value": st.integers(0, 255),
    "seed": st.integers(0, 1000),
    "frames": st.sampled_from([1, 1, 3]),  # an animation or multi-page file where the container holds one
})


def make_file(folder: Path, name: str, c: dict[str, object]) -> Path:
    w, h = c["size"]  # type: ignore[misc]
    seed, mode = int(c["seed"]), str(c["mode"])  # type: ignore[call-overload]
    img = make_image(mode, int(w), int(h), seed)  # type: ignore[call-overload]
    more = tuple(make_image(mode, int(w), int(h), seed + i) for i in range(1, int(c.get("frames", 1))))  # type: ignore[call-overload]
    data = encode(img, CONTAINERS[str(c["container"])], c["orientation"], bool(c["icc"]), more)  # type: ignore[arg-type]
    data = mutate(data, str(c["damage"]), float(c["where"]), int(c["value"]))  # type: ignore[call-overload]
    path = folder / f"{name}.{c['container']}"
    path.write_bytes(data)
    return path


def check_output(code: int, err: str, files: int) -> None:
    assert code in (0, 1, 2, 130), (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("esrgan: ") for line in lines), err
    notes = [line for line in lines if line.startswith("esrgan: note:")]
    assert len(notes) <= files and len(lines) - len(notes) <= files + 2, err


def no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# Bounded for a busy 2-core machine: a fixed number of cases, no shrinking (a failure prints its full case).
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(c=case)
def test_fuzz_single(c: dict[str, object], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                     tiny_weights: Path) -> None:
    from test_decode import run_cli

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        src = make_file(folder, "in", c)
        out_ext = "tif" if c["mode"] == "F" else str(c["container"])
        code, err = run_cli(monkeypatch, capsys, "upscale", src, "-o", folder / f"out.{out_ext}",
                            "--model", tiny_weights, "--max-output-pixels", "100000")
        check_output(code, err, 1)
        no_temp_files(folder)
    CASES["single"] += 1


@settings(SETTINGS, max_examples=40)
@given(cs=st.lists(case, min_size=2, max_size=4))
def test_fuzz_batch(cs: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str], tiny_weights: Path) -> None:
    from test_decode import run_cli

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "in").mkdir()
        for i, c in enumerate(cs):
            make_file(folder / "in", f"f{i}", c)
        code, err = run_cli(monkeypatch, capsys, "upscale", folder / "in", "-o", folder / "out",
                            "--model", tiny_weights, "--format", "tiff", "--max-output-pixels", "100000")
        check_output(code, err, len(cs))
        no_temp_files(folder)
    CASES["batch"] += 1


def test_fuzz_a_few_in_real_processes(tiny_weights: Path, tmp_path: Path) -> None:
    """The same checks where fd 2 is real: C libraries' output must not leak, nor tracebacks."""
    import random

    rng = random.Random(7)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):
        c = {"mode": rng.choice(MODES), "size": (rng.choice(SIDES), rng.choice(SIDES)),
             "container": rng.choice(sorted(CONTAINERS)), "orientation": rng.choice([None, 3, 6, 8]),
             "icc": rng.random() < 0.5, "damage": ["none", "truncate", "bitflip", "header"][i % 4],
             "where": rng.random(), "value": rng.randrange(256), "seed": i, "frames": 1 + 2 * (i % 2)}
        make_file(folder, f"f{i}", c)
    single = esrgan("upscale", next(folder.glob("f1.*")), "-o", tmp_path / "one.tif", "--model", tiny_weights)
    check_output(single.returncode, single.stderr, 1)
    batch = esrgan("upscale", folder, "-o", tmp_path / "out", "--model", tiny_weights, "--format", "tiff")
    check_output(batch.returncode, batch.stderr, 8)
    no_temp_files(tmp_path)
    print(f"\nfuzz: {CASES['single']} single-file cases, {CASES['batch']} batch cases in process, "
          "2 real processes over 8 files", file=sys.stderr)


def test_damaged_exif_is_left_out_with_a_note(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], tiny_weights: Path,
                                              tmp_path: Path) -> None:
    """Found by the batch fuzz: a JPEG whose EXIF header is broken made the TIFF encoder raise SyntaxError."""
    from test_decode import run_cli

    c = {"mode": "1", "size": (1, 1), "container": "jpg", "orientation": 1, "icc": False, "damage": "header",
         "where": 1.0, "value": 0, "seed": 0}
    src = make_file(tmp_path, "x", c)
    code, err = run_cli(monkeypatch, capsys, "upscale", src, "-o", tmp_path / "o.tif", "--model", tiny_weights)
    assert code == 0 and "EXIF or colour profile is damaged and was not copied" in err, err
    assert Image.open(tmp_path / "o.tif").size == (4, 4)
