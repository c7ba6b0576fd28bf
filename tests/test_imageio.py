"""Image modes, metadata and alpha through the real pipeline with a tiny model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from esrgan_cli.errors import ImageReadError, ImageWriteError
from esrgan_cli.image.decode import read_image
from esrgan_cli.image.encode import output_format, write_image
from esrgan_cli.model.weights import load_weights
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale.pipeline import UpscaleOptions, upscale_image
from esrgan_cli.upscale.upscaler import Upscaler

from conftest import padded_forward, random_image


@pytest.fixture
def upscaler(tiny_weights: Path) -> Upscaler:
    return Upscaler(load_weights(tiny_weights), choose_placement("cpu", "auto"))


def run(path: Path, upscaler: Upscaler, out: Path, **opts) -> Image.Image:
    image = read_image(path)
    fmt = output_format(out)
    result = upscale_image(image, upscaler, fmt, UpscaleOptions(**opts))
    notes: list[str] = []
    write_image(result.image, out, fmt, image, 95, notes)
    return Image.open(out)


def rgb8(h: int = 12, w: int = 10) -> np.ndarray:
    return (random_image(h, w) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "mode,make,suffix,out_mode",
    [
        ("RGB", lambda: Image.fromarray(rgb8()), ".png", "RGB"),
        ("L", lambda: Image.fromarray(rgb8()).convert("L"), ".png", "L"),
        ("LA", lambda: Image.fromarray(rgb8()).convert("LA"), ".png", "LA"),
        ("RGBA", lambda: Image.fromarray(rgb8()).convert("RGBA"), ".png", "RGBA"),
        ("P", lambda: Image.fromarray(rgb8()).convert("P"), ".png", "RGB"),
        ("1", lambda: Image.fromarray(rgb8()).convert("1"), ".png", "L"),
        ("CMYK", lambda: Image.fromarray(rgb8()).convert("CMYK"), ".jpg", "CMYK"),
        ("RGB-bmp", lambda: Image.fromarray(rgb8()), ".bmp", "RGB"),
        ("RGB-tiff", lambda: Image.fromarray(rgb8()), ".tiff", "RGB"),
    ],
)
def test_modes_round_trip(mode, make, suffix, out_mode, upscaler, tmp_path: Path) -> None:
    src = tmp_path / f"in{'.jpg' if mode == 'CMYK' else '.png'}"
    make().save(src)
    out = run(src, upscaler, tmp_path / f"out{suffix}")
    assert out.size == (40, 48)
    assert out.mode == out_mode


def test_palette_with_transparency_keeps_alpha(upscaler, tmp_path: Path) -> None:
    img = Image.fromarray(rgb8()).convert("P")
    img.info["transparency"] = 0
    src = tmp_path / "p.png"
    img.save(src, transparency=0)
    assert run(src, upscaler, tmp_path / "o.png").mode == "RGBA"


def test_sixteen_bit_grayscale_stays_sixteen_bit_where_possible(upscaler, tmp_path: Path) -> None:
    plane = (random_image(12, 10)[..., 0] * 65535).astype(np.uint16)
    src = tmp_path / "g16.png"
    Image.fromarray(plane).save(src)
    assert read_image(src).bit_depth == 16
    out = run(src, upscaler, tmp_path / "o.png")
    assert out.mode == "I;16"
    values = np.asarray(out)
    assert values.dtype == np.uint16 and len(np.unique(values)) > 256  # not 8-bit data in a 16-bit box
    assert run(src, upscaler, tmp_path / "o.jpg").mode == "L"


def test_grayscale_output_is_the_luma_of_the_model_output(upscaler, tmp_path: Path) -> None:
    src = tmp_path / "g.png"
    Image.fromarray(rgb8()).convert("L").save(src)
    gray = np.asarray(run(src, upscaler, tmp_path / "o.png"), np.float32)
    image = read_image(src)
    rgb = padded_forward(upscaler, image.rgb)  # the whole image, with the engine's reflected edges
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32) * 255
    assert np.abs(gray - luma).max() <= 1.0


def test_exif_orientation_applied_and_metadata_kept(upscaler, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "in.jpg"
    Image.fromarray(rgb8(12, 20)).save(src, exif=exif.tobytes(), icc_profile=icc, quality=95)
    for suffix in (".png", ".jpg", ".webp", ".tiff"):
        out = run(src, upscaler, tmp_path / f"o{suffix}")
        assert out.size == (48, 80), suffix  # 20×12 stored, shown as 12×20
        assert out.info.get("icc_profile") == icc, suffix
        got = out.getexif()
        assert got.get(0x010F) == "TestCam", suffix
        assert got.get(0x0112) in (None, 1), suffix


def test_alpha_is_resized_separately_by_default(upscaler, tmp_path: Path) -> None:
    rgba = np.dstack([rgb8(16, 16), np.zeros((16, 16), np.uint8)])
    rgba[:, 8:, 3] = 255
    src = tmp_path / "a.png"
    Image.fromarray(rgba).save(src)
    out = np.asarray(run(src, upscaler, tmp_path / "o.png"))
    assert out.shape == (64, 64, 4)
    # A clean step: no ringing halo over the transparent half, blurred only next to the edge at x = 32.
    assert out[:, :28, 3].max() == 0 and out[:, 36:, 3].min() == 255
    assert 0 < out[0, 31, 3] < 255
    # Through the model instead: a random tiny net is no identity, so only the plumbing is checked.
    image = read_image(src)
    via_model = upscale_image(image, upscaler, "PNG", UpscaleOptions(alpha="model"))
    assert via_model.image.mode == "RGBA" and via_model.model_calls == 2


def test_outscale_resizes_the_model_output(upscaler, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(rgb8(12, 10)).save(src)
    assert run(src, upscaler, tmp_path / "o.png", outscale=2.5).size == (25, 30)


def test_jpeg_drops_alpha_with_a_note(upscaler, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(rgb8()).convert("RGBA").save(src)
    image = read_image(src)
    result = upscale_image(image, upscaler, "JPEG", UpscaleOptions())
    assert result.image.mode == "RGB" and any("alpha" in n for n in result.notes)


def test_writes_are_atomic(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 4))
    src_info = read_image(_png(tmp_path / "src.png"))
    target = tmp_path / "out.png"
    target.write_bytes(b"previous complete file")

    class Boom(Exception):
        pass

    def failing_save(*args, **kwargs):
        raise Boom

    original = Image.Image.save
    Image.Image.save = failing_save
    try:
        with pytest.raises(ImageWriteError, match=r"out.png: cannot encode as PNG \(Boom"):  # one line, any error
            write_image(img, target, "PNG", src_info, 95, [])
    finally:
        Image.Image.save = original
    assert target.read_bytes() == b"previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "src.png"]


def _png(path: Path) -> Path:
    Image.fromarray(rgb8()).save(path)
    return path


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty file"), (b"hello, world\n", "not an image"), (None, "cannot decode")],
)
def test_unreadable_inputs(content, reason, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    if content is None:
        buf = io.BytesIO()
        Image.fromarray(rgb8(64, 64)).save(buf, "PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path)


def test_pixel_limit(tmp_path: Path) -> None:
    path = _png(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="over the input limit"):
        read_image(path, max_pixels=50)


def test_unknown_output_format() -> None:
    with pytest.raises(ImageWriteError, match="unknown output format"):
        output_format(Path("x.heic"))
