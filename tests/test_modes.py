"""Transparency of every kind, and float images, through the pipeline with a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esrgan_cli.errors import ImageWriteError
from esrgan_cli.image.decode import read_image
from esrgan_cli.image.encode import output_format, write_image
from esrgan_cli.model.weights import load_weights
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale.pipeline import UpscaleOptions, upscale_image
from esrgan_cli.upscale.upscaler import Upscaler


@pytest.fixture
def upscaler(tiny_weights: Path) -> Upscaler:
    return Upscaler(load_weights(tiny_weights), choose_placement("cpu", "auto"))


def run(src: Path, upscaler: Upscaler, out: Path, **opts: object) -> tuple[Image.Image, list[str]]:
    image = read_image(src)
    fmt = output_format(out)
    result = upscale_image(image, upscaler, fmt, UpscaleOptions(**opts))  # type: ignore[arg-type]
    write_image(result.image, out, fmt, image, 95, result.notes)
    return Image.open(out), result.notes


def half_transparent(mode: str) -> tuple[Image.Image, object]:
    """A 12×10 image whose left half is the transparent colour and whose right half is not."""
    rng = np.random.default_rng(0)
    if mode == "RGB":
        arr = rng.integers(100, 255, (12, 10, 3), dtype=np.uint8)
        arr[:, :5] = (1, 2, 3)
        return Image.fromarray(arr), (1, 2, 3)
    if mode == "I;16":
        arr16 = rng.integers(1000, 60000, (12, 10), dtype=np.uint16)
        arr16[:, :5] = 7
        return Image.fromarray(arr16), 7
    arr = rng.integers(100, 255, (12, 10), dtype=np.uint8)
    arr[:, :5] = 5
    if mode == "1":
        arr[:, :5] = 0
        arr[:, 5:] = 255
        return Image.fromarray(arr).convert("1"), 0
    return Image.fromarray(arr), 5


@pytest.mark.parametrize("mode", ["L", "RGB", "1", "I;16", "P"])
def test_a_single_transparent_colour_becomes_alpha(mode: str, upscaler: Upscaler, tmp_path: Path) -> None:
    if mode == "P":
        img, colour = half_transparent("RGB")
        img = img.convert("P")
        colour = img.getpixel((0, 0))
    else:
        img, colour = half_transparent(mode)
    img.save(tmp_path / "in.png", transparency=colour)
    assert read_image(tmp_path / "in.png").alpha is not None
    out, notes = run(tmp_path / "in.png", upscaler, tmp_path / "out.png")
    assert out.mode in ("LA", "RGBA") and out.size == (40, 48)
    alpha = np.asarray(out.getchannel("A"))
    assert alpha[:, :16].max() == 0 and alpha[:, 24:].min() == 255
    assert ("16-bit grayscale with transparency" in " ".join(notes)) == (mode == "I;16")


def test_alpha_to_a_format_without_it_notes_or_refuses(upscaler: Upscaler, tmp_path: Path) -> None:
    img, colour = half_transparent("RGB")
    img.save(tmp_path / "in.png", transparency=colour)
    out, notes = run(tmp_path / "in.png", upscaler, tmp_path / "out.jpg")
    assert out.mode == "RGB" and notes == ["JPEG has no alpha channel: transparency dropped"]
    with pytest.raises(ImageWriteError, match="no alpha channel"):
        run(tmp_path / "in.png", upscaler, tmp_path / "refused.jpg", alpha_loss="refuse")
    assert not (tmp_path / "refused.jpg").exists()
    bmp, notes = run(tmp_path / "in.png", upscaler, tmp_path / "out.bmp")
    assert "BMP's alpha channel is ignored by most readers" in notes[0]
    assert int.from_bytes((tmp_path / "out.bmp").read_bytes()[28:30], "little") == 32  # alpha is in the file
    gif, _ = run(tmp_path / "in.png", upscaler, tmp_path / "out.gif")
    assert gif.convert("RGBA").getchannel("A").getextrema() == (0, 255)


def test_a_float_tiff_keeps_its_range(upscaler: Upscaler, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = (rng.random((12, 10)) * 1005 - 5).astype(np.float32)
    values[0, 0], values[-1, -1] = -5.0, 1000.0
    Image.fromarray(values, mode="F").save(tmp_path / "in.tif")
    out, _ = run(tmp_path / "in.tif", upscaler, tmp_path / "out.tif")
    assert out.mode == "F" and out.size == (40, 48)
    result = np.asarray(out)
    assert -5.0 <= result.min() < 200 and 800 < result.max() <= 1000.0
    assert result.max() - result.min() > 500  # the range survived, not clipped to 0..255 or 0..1
    with pytest.raises(ImageWriteError, match=r"float image \(values -5 to 1000\) can only be written as TIFF"):
        run(tmp_path / "in.tif", upscaler, tmp_path / "out.png")


