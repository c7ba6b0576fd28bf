"""Animations (GIF, WebP, APNG) and multi-page TIFF: every frame upscaled, with durations, loop and disposal kept."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import esrgan

from esrgan_cli.image.decode import read_image
from esrgan_cli.image.encode import output_format
from esrgan_cli.model.weights import load_weights
from esrgan_cli.upscale.device import choose_placement
from esrgan_cli.upscale.pipeline import UpscaleOptions, upscale_file
from esrgan_cli.upscale.upscaler import Upscaler

DURATIONS = [40, 70, 100]
LOOP = 2
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
GIF_DISPOSAL = [1, 2, 3]  # none, background, previous
APNG_DISPOSAL = [0, 1, 2]  # the same three, in APNG's numbering
# A grey default image, then four frames: Pillow's Tests/images/apng/delay.png has 0.5 s, 1 s, 0.5 s, 1 s after a
# default image that is not part of the animation.
APNG_COLOURS = [(90, 90, 90), (200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
APNG_DELAYS = [500, 1000, 500, 1000]


@pytest.fixture
def upscaler(tiny_weights: Path) -> Upscaler:
    return Upscaler(load_weights(tiny_weights), choose_placement("cpu", "auto"))


def frames(size: tuple[int, int] = (9, 7), colours: list[tuple[int, int, int]] = COLOURS) -> list[Image.Image]:
    """Clearly different frames (a gradient tinted a way for each colour), so no encoder merges two of them."""
    w, h = size
    ramp = np.linspace(0, 1, w * h, dtype=np.float32).reshape(h, w, 1)
    return [Image.fromarray((ramp * np.array(c) + (1 - ramp) * 20).astype(np.uint8)) for c in colours]


def save_animation(path: Path) -> Path:
    first, *rest = frames()
    extra: dict[str, object] = {}
    if path.suffix == ".gif":
        extra["disposal"] = GIF_DISPOSAL
    elif path.suffix == ".png":
        extra["disposal"] = APNG_DISPOSAL
    if path.suffix == ".webp":
        extra["lossless"] = True
    first.save(path, save_all=True, append_images=rest, duration=DURATIONS, loop=LOOP, **extra)
    return path


def played(path: Path) -> tuple[list[Image.Image], list[float | None], object, list[object]]:
    """(frames as RGB copies, durations, loop, disposal) as a reader sees them."""
    images, durations, disposal = [], [], []
    with Image.open(path) as img:
        for index in range(getattr(img, "n_frames", 1)):
            img.seek(index)
            img.load()
            images.append(img.convert("RGB"))
            durations.append(img.info.get("duration"))
            disposal.append(getattr(img, "disposal_method", None) if img.format == "GIF"
                            else img.info.get("disposal"))
        return images, durations, img.info.get("loop"), disposal


@pytest.mark.parametrize("ext", [".gif", ".webp", ".png"])
def test_an_animation_keeps_every_frame_its_durations_loop_and_disposal(
    ext: str, tiny_weights: Path, upscaler: Upscaler, tmp_path: Path
) -> None:
    src = save_animation(tmp_path / f"anim{ext}")
    out = tmp_path / f"big{ext}"
    proc = esrgan("upscale", src, "-o", out, "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    assert "3 frames of 36×28" in proc.stderr
    images, durations, loop, disposal = played(out)
    assert len(images) == 3
    assert [round(float(d)) for d in durations if d is not None] == DURATIONS
    assert loop == LOOP
    if ext == ".gif":
        assert disposal == GIF_DISPOSAL
    elif ext == ".png":
        assert disposal == APNG_DISPOSAL
    assert all(im.size == (36, 28) for im in images)
    # Each output frame is the upscale of its own input frame (the nearest of the three; GIF's palette and
    # WebP's encoder keep them from being equal).
    alone = []
    for index, frame in enumerate(played(src)[0]):
        frame.save(tmp_path / f"frame{index}.png")
        alone.append(np.asarray(upscale_file(read_image(tmp_path / f"frame{index}.png"), upscaler, "PNG",
                                             UpscaleOptions()).image, dtype=np.float32))
    for index, im in enumerate(images):
        errors = [float(np.mean((np.asarray(im, dtype=np.float32) - ref) ** 2)) for ref in alone]
        assert int(np.argmin(errors)) == index, errors


def test_apng_frames_equal_upscaling_each_frame_alone(upscaler: Upscaler, tmp_path: Path) -> None:
    src = save_animation(tmp_path / "anim.png")
    image = read_image(src, all_frames=True)
    result = upscale_file(image, upscaler, "PNG", UpscaleOptions())
    assert result.animation is not None and result.frame_count == 3
    for index, (frame, ours) in enumerate(zip(frames(), [result.image, *result.animation.rest], strict=True)):
        frame.save(tmp_path / f"frame{index}.png")
        alone = upscale_file(read_image(tmp_path / f"frame{index}.png"), upscaler, "PNG", UpscaleOptions()).image
        assert np.array_equal(np.asarray(ours.convert("RGB")), np.asarray(alone.convert("RGB")))


def test_a_three_page_tiff_gives_three_pages_each_in_its_own_mode(tiny_weights: Path, tmp_path: Path) -> None:
    pages = [frames()[0], Image.new("L", (5, 3), 90),
             Image.fromarray(np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000)]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    proc = esrgan("upscale", tmp_path / "scan.tif", "-o", tmp_path / "big.tif", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "big.tif") as out:
        got = []
        for index in range(out.n_frames):
            out.seek(index)
            got.append((out.mode, out.size))
    assert got == [("RGB", (36, 28)), ("L", (20, 12)), ("I;16", (24, 16))]


def test_pages_of_different_sizes_into_an_animation_are_refused_in_one_line(
    tiny_weights: Path, tmp_path: Path
) -> None:
    pages = [Image.new("RGB", (6, 5), "red"), Image.new("RGB", (4, 4), "blue")]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    proc = esrgan("upscale", tmp_path / "scan.tif", "-o", tmp_path / "big.gif", "--model", tiny_weights)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"esrgan: error: {tmp_path / 'scan.tif'}: its 2 pages have different sizes, which only TIFF can hold; "
        "write a .tif, or pass --first-frame"]
    assert not (tmp_path / "big.gif").exists()


def test_first_frame_keeps_only_the_first_without_a_note(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_animation(tmp_path / "anim.gif")
    proc = esrgan("upscale", src, "-o", tmp_path / "one.gif", "--model", tiny_weights, "--first-frame")
    assert proc.returncode == 0, proc.stderr
    assert "note:" not in proc.stderr
    assert len(played(tmp_path / "one.gif")[0]) == 1


def test_a_format_with_one_image_gets_the_first_frame_and_a_note(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_animation(tmp_path / "anim.gif")
    proc = esrgan("upscale", src, "-o", tmp_path / "one.jpg", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    assert "JPEG holds one image: only the first of its 3 frames was upscaled" in proc.stderr
    assert Image.open(tmp_path / "one.jpg").size == (36, 28)


def test_a_one_image_output_decodes_only_the_first_frame(upscaler: Upscaler, tmp_path: Path) -> None:
    """Frames a JPEG cannot hold are never decoded, so a long animation is not refused for them by the input
    limit, and the note still counts them."""
    from esrgan_cli.errors import ImageReadError
    from esrgan_cli.upscale.pipeline import reads_all_frames

    src = save_animation(tmp_path / "anim.gif")
    options = UpscaleOptions(tile=0)
    assert reads_all_frames("GIF", options) and not reads_all_frames("JPEG", options)
    assert not reads_all_frames("GIF", UpscaleOptions(tile=0, first_frame=True))
    limit = 2 * 9 * 7  # two frames' pixels: the three frames together are over it
    with pytest.raises(ImageReadError, match="over the input limit"):
        read_image(src, limit, all_frames=reads_all_frames("GIF", options))
    image = read_image(src, limit, all_frames=reads_all_frames("JPEG", options))
    assert image.frames is None and image.frame_count == 3
    result = upscale_file(image, upscaler, "JPEG", options)
    assert result.image.size == (36, 28)
    assert any("only the first of its 3 frames" in n for n in result.notes)


def test_the_output_limit_counts_every_frame(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_animation(tmp_path / "anim.webp")
    one_frame = 36 * 28
    args = ("upscale", src, "-o", tmp_path / "big.webp", "--model", tiny_weights,
            "--max-output-pixels", str(2 * one_frame))
    proc = esrgan(*args)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "3 frames would upscale to 3,024 pixels" in proc.stderr
    assert "--first-frame" in proc.stderr
    assert esrgan(*args, "--first-frame").returncode == 0


def test_progress_counts_frames_and_covers_every_pixel(upscaler: Upscaler, tmp_path: Path) -> None:
    image = read_image(save_animation(tmp_path / "anim.gif"), all_frames=True)
    seen: list[tuple[int, int]] = []
    advanced: list[tuple[int, int]] = []
    upscale_file(image, upscaler, output_format(tmp_path / "x.gif"), UpscaleOptions(tile=16, overlap=4),
                 lambda n, total: advanced.append((n, total)), on_frame=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert {total for _, total in advanced} == {3 * 9 * 7}
    assert sum(n for n, _ in advanced) == 3 * 9 * 7


def test_a_batch_writes_every_frame_and_counts_them(tiny_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    save_animation(folder / "anim.gif")
    frames()[0].save(folder / "still.png")
    proc = esrgan("upscale", folder, "-o", tmp_path / "out", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    assert "done 2 (4 frames or pages)" in proc.stderr
    assert len(played(tmp_path / "out" / "anim.gif")[0]) == 3
    rerun = esrgan("upscale", folder, "-o", tmp_path / "out", "--model", tiny_weights)
    assert "2 already done" in rerun.stderr


def test_a_damaged_later_frame_keeps_the_frames_before_it_with_a_note(tiny_weights: Path, tmp_path: Path) -> None:
    src = save_animation(tmp_path / "anim.gif")
    data = src.read_bytes()
    cut = tmp_path / "cut.gif"
    cut.write_bytes(data[: len(data) - 12])  # into the last frame's image data
    proc = esrgan("upscale", cut, "-o", tmp_path / "big.gif", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    note, wrote = proc.stderr.strip().splitlines()
    assert note.startswith(f"esrgan: note: {cut}: frame 3 of 3 cannot be decoded (")
    assert note.endswith("the first 2 are kept") and wrote.startswith("esrgan: wrote")
    assert len(played(tmp_path / "big.gif")[0]) == 2


def test_frames_that_are_all_the_same_become_one_still_image(upscaler: Upscaler, tmp_path: Path) -> None:
    # The encoders merge identical frames themselves, and Pillow's GIF writer then fails on a list of disposals;
    # a file with such frames is read here as the decoder gives it, frame by frame.
    import dataclasses

    from esrgan_cli.image.decode import Frames

    frames()[0].save(tmp_path / "still.png")
    still = read_image(tmp_path / "still.png")
    timing = Frames(images=(still, still, still), durations=(10.0, 20.0, 30.0), loop=0,
                    disposal=("none", "background", "previous"), pages=False)
    result = upscale_file(dataclasses.replace(still, frames=timing), upscaler, "GIF", UpscaleOptions())
    assert result.animation is None and result.frame_count == 1
    assert result.image.size == (36, 28)


def test_gif_disposals_that_agree_are_given_as_one_value() -> None:
    from esrgan_cli.image.animation import Animation, save_params
    from esrgan_cli.image.decode import Frames

    def params(disposal: tuple[str, ...], fmt: str) -> object:
        timing = Frames(images=(), durations=(10.0, 20.0), loop=None, disposal=disposal, pages=False)  # type: ignore[arg-type]
        return save_params(Animation((Image.new("RGB", (2, 2)),), timing), fmt)

    assert params(("background", "background"), "GIF") == {
        "save_all": True, "append_images": [Image.new("RGB", (2, 2))], "duration": [10, 20], "disposal": 2}
    got = params(("none", "previous"), "PNG")
    assert isinstance(got, dict)
    assert got["disposal"] == [0, 2] and got["blend"] == [0, 0] and got["loop"] == 1  # a GIF that played once


def apng(path: Path) -> tuple[list[Image.Image], dict[str, object]]:
    """Every image of an APNG as Pillow shows it, and its timing: each image's duration, disposal and blend (None
    for a hidden default image, which has no frame control), the loop, and whether the first one is hidden."""
    images: list[Image.Image] = []
    each: dict[str, list[object]] = {"duration": [], "disposal": [], "blend": []}
    with Image.open(path) as img:
        for index in range(getattr(img, "n_frames", 1)):
            img.seek(index)
            img.load()
            images.append(img.copy())
            for key, values in each.items():
                values.append(img.info.get(key))
        return images, {**each, "loop": img.info.get("loop"), "default_image": img.info.get("default_image", False)}


def upscaled_alone(images: list[Image.Image], upscaler: Upscaler, tmp_path: Path) -> list[Image.Image]:
    """Each image upscaled as a still PNG of its own: what each frame of an animation should come out as."""
    out = []
    for index, image in enumerate(images):
        image.save(tmp_path / f"alone{index}.png")
        out.append(upscale_file(read_image(tmp_path / f"alone{index}.png"), upscaler, "PNG", UpscaleOptions()).image)
    return out


def same(got: list[Image.Image], want: list[Image.Image], tolerance: int = 0) -> bool:
    return len(got) == len(want) and all(
        a.mode == b.mode and int(np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)).max()) <= tolerance
        for a, b in zip(got, want, strict=True))


@pytest.fixture
def hidden_default(tmp_path: Path) -> Path:
    default, *animation = frames(colours=APNG_COLOURS)
    default.save(tmp_path / "delay.png", save_all=True, append_images=animation, default_image=True,
                 duration=APNG_DELAYS, loop=0, blend=1)
    return tmp_path / "delay.png"


def test_an_apng_default_image_stays_hidden_and_every_frame_keeps_its_delay(
    hidden_default: Path, tiny_weights: Path, upscaler: Upscaler, tmp_path: Path
) -> None:
    images, timing = apng(hidden_default)
    assert timing["default_image"] is True and timing["duration"] == [None, 500, 1000, 500, 1000]  # as Pillow's
    proc = esrgan("upscale", hidden_default, "-o", tmp_path / "big.png", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    got, timing = apng(tmp_path / "big.png")
    assert timing == {"default_image": True, "duration": [None, 500, 1000, 500, 1000], "loop": 0,
                      "disposal": [None, 0, 0, 0, 0], "blend": [None, 1, 1, 1, 1]}
    assert same(got, upscaled_alone(images, upscaler, tmp_path))  # the default image too, still hidden


def test_an_apng_default_image_is_left_out_of_a_gif(
    hidden_default: Path, tiny_weights: Path, upscaler: Upscaler, tmp_path: Path
) -> None:
    proc = esrgan("upscale", hidden_default, "-o", tmp_path / "big.gif", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    assert "4 frames of 36×28" in proc.stderr
    images, durations, loop, disposal = played(tmp_path / "big.gif")
    assert durations == APNG_DELAYS and loop == 0 and disposal == [1, 1, 1, 1]
    want = [np.asarray(im.convert("RGB"), np.float32) for im in upscaled_alone(apng(hidden_default)[0], upscaler,
                                                                                  tmp_path)]
    for index, im in enumerate(images):  # the nearest of the five: GIF's palette keeps them from being equal
        errors = [float(np.mean((np.asarray(im, np.float32) - ref) ** 2)) for ref in want]
        assert int(np.argmin(errors)) == index + 1, errors


def test_a_16_bit_apng_keeps_its_delays_as_8_bit_frames(tiny_weights: Path, upscaler: Upscaler, tmp_path: Path) -> None:
    """Like Pillow's apng/mode_16bit.png (a hidden default image, then 0.1 s and 1 s), in 16-bit grey: the only
    16-bit mode Pillow writes. Its writer compares frames in 8 bits, where these look alike: different dispose ops
    keep it from merging them ("over" cannot be read back in 16 bits)."""
    ramp = np.linspace(0, 1, 63).reshape(7, 9)
    built = [Image.fromarray((ramp * k + 300).astype(np.uint16)) for k in (60000, 30000, 10000)]
    built[0].save(tmp_path / "grey16.png", save_all=True, append_images=built[1:], default_image=True,
                  duration=[100, 1000], loop=1, disposal=[0, 2], blend=0)
    images, _ = apng(tmp_path / "grey16.png")
    assert same(images, built)
    proc = esrgan("upscale", tmp_path / "grey16.png", "-o", tmp_path / "big.png", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    assert "16-bit frames are written as an 8-bit APNG" in proc.stderr
    got, timing = apng(tmp_path / "big.png")
    assert timing == {"default_image": True, "duration": [None, 100, 1000], "loop": 1, "disposal": [None, 0, 2],
                      "blend": [None, 0, 0]}
    eight = [Image.fromarray(np.rint(np.asarray(im) / 257).astype(np.uint8))
             for im in upscaled_alone(images, upscaler, tmp_path)]
    assert same(got, eight, tolerance=1)


def test_pillow_writes_16_bit_frames_that_differ_above_255_as_one_still_image(tmp_path: Path) -> None:
    """Why frames_for writes 16-bit frames into an APNG as 8-bit. When this fails, Pillow's APNG writer compares
    16-bit frames exactly, and they can stay 16-bit."""
    from esrgan_cli.image.animation import frames_for
    from esrgan_cli.image.decode import Frames

    built = [Image.fromarray(np.full((2, 2), v, np.uint16)) for v in (1000, 2000, 3000)]
    built[0].save(tmp_path / "x.png", save_all=True, append_images=built[1:], duration=[10, 20, 30])
    images, timing = apng(tmp_path / "x.png")
    assert len(images) == 1 and timing["duration"] == [None] and same(images, built[:1])  # a still PNG
    built[0].save(tmp_path / "x.png")
    still = read_image(tmp_path / "x.png")
    two = Frames(images=(still, still), durations=(10.0, 20.0), loop=0, disposal=(), pages=False)
    notes: list[str] = []
    assert [f.bit_depth for f in frames_for(two, "PNG", notes).images] == [8, 8] and len(notes) == 1
    assert [f.bit_depth for f in frames_for(two, "TIFF", notes).images] == [16, 16] and len(notes) == 1


def test_apng_dispose_ops_are_kept_and_blend_over_only_where_it_draws_the_frame_as_it_is(
    tiny_weights: Path, upscaler: Upscaler, tmp_path: Path
) -> None:
    """Each frame written is the whole canvas the input showed: "over" would composite one that is see-through a
    second time, over what was under it."""
    alpha = [255, 128, 128, 255, 255]  # frames 2 and 3 see-through: the canvas after frame 3 is too
    built = [im.convert("RGBA") for im in frames(colours=APNG_COLOURS)]
    for im, a in zip(built, alpha, strict=True):
        im.putalpha(a)
    built[0].save(tmp_path / "ops.png", save_all=True, append_images=built[1:], duration=[40, 70, 100, 130, 160],
                  loop=3, disposal=[1, 0, 2, 0, 0], blend=[1, 1, 1, 1, 0])
    images, _ = apng(tmp_path / "ops.png")
    proc = esrgan("upscale", tmp_path / "ops.png", "-o", tmp_path / "big.png", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    got, timing = apng(tmp_path / "big.png")
    assert timing == {"default_image": False, "duration": [40, 70, 100, 130, 160], "loop": 3,
                      "disposal": [1, 0, 2, 0, 0], "blend": [1, 0, 0, 1, 0]}
    assert same(got, upscaled_alone(images, upscaler, tmp_path))


def test_a_grey_apng_disposing_to_background_is_written_with_none(
    tiny_weights: Path, upscaler: Upscaler, tmp_path: Path
) -> None:
    """Pillow's APNG writer cannot clear an L frame to background; writing "none" shows the same frames."""
    built = [im.convert("L") for im in frames()]
    built[0].save(tmp_path / "grey.png", save_all=True, append_images=built[1:], duration=DURATIONS, loop=LOOP)
    data = bytearray((tmp_path / "grey.png").read_bytes())
    pos = 8
    while pos < len(data):  # every frame "background", as another encoder may write it
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"fcTL":
            data[pos + 8 + 24] = 1
            data[pos + 8 + length : pos + 12 + length] = zlib.crc32(data[pos + 4 : pos + 8 + length]).to_bytes(4, "big")
        pos += 12 + length
    (tmp_path / "grey.png").write_bytes(data)
    images, timing = apng(tmp_path / "grey.png")
    assert timing["disposal"] == [1, 1, 1] and same(images, built)
    proc = esrgan("upscale", tmp_path / "grey.png", "-o", tmp_path / "big.png", "--model", tiny_weights)
    assert proc.returncode == 0, proc.stderr
    got, timing = apng(tmp_path / "big.png")
    assert timing["disposal"] == [0, 0, 0] and timing["duration"] == DURATIONS and timing["loop"] == LOOP
    assert same(got, upscaled_alone(images, upscaler, tmp_path))
