"""`esrgan eval`'s artefact figures: the grid share and the chroma error, on synthetic images with and without a
planted pattern or colour fringe, and CIELAB against known values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import esrgan

from esrgan_cli.eval.artefacts import chroma_error, grid_share, srgb_to_lab
from esrgan_cli.eval.score import mean_scores, pair_images, score_pairs


def natural(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-like image: coloured noise with a 1/f amplitude spectrum (as photos have), 0..255 float."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fft2(rng.normal(size=(h, w, 3)), axes=(0, 1))
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    image = np.real(np.fft.ifft2(spectrum / np.maximum(f, 1 / max(h, w))[..., None], axes=(0, 1)))
    return np.asarray(np.clip((image - image.mean()) / image.std() * 40 + 128, 0, 255))


def period_four(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A checkerboard of 2×2-pixel squares (period 4) and a cross-hatch of one-pixel lines every 4 pixels, ±1/0..1."""
    yy, xx = np.mgrid[:h, :w]
    checker = np.where((yy // 2 + xx // 2) % 2 == 0, 1.0, -1.0)
    hatch = ((yy % 4 == 0) | (xx % 4 == 0)).astype(np.float64)
    return checker, hatch


def test_cielab_matches_known_srgb_values() -> None:
    lab = srgb_to_lab(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]]))[0]
    # Published sRGB → CIELAB (D65) values: red, green, blue, white, black.
    expected = [(53.24, 80.09, 67.20), (87.73, -86.18, 83.18), (32.30, 79.19, -107.86), (100, 0, 0), (0, 0, 0)]
    assert lab == pytest.approx(np.array(expected), abs=0.01)
    gray = srgb_to_lab(np.full((1, 1, 3), 119))[0, 0]
    assert gray[0] == pytest.approx(50.0, abs=0.1) and abs(gray[1]) < 1e-3 and abs(gray[2]) < 1e-3


@pytest.mark.parametrize("size", [96, 256])
def test_grid_share_rises_with_a_planted_period_four_pattern(size: int) -> None:
    image = natural(size, size)
    checker, hatch = period_four(size, size)
    clean = grid_share(image.round(), 4)
    # Amplitudes of 2 and 3 levels on an image with a standard deviation of 40: faint, as a model's cross-hatch is.
    with_checker = grid_share(np.clip(image + 2 * checker[..., None], 0, 255).round(), 4)
    with_hatch = grid_share(np.clip(image + 3 * hatch[..., None], 0, 255).round(), 4)
    print(f"\n{size}²: grid share clean {clean:.2%}, checkerboard ±2 {with_checker:.2%}, "
          f"cross-hatch 3 {with_hatch:.2%}")
    assert clean < 0.03
    assert with_checker > 2 * clean and with_hatch > 1.5 * clean
    # A pattern with another period (5 pixels) is not on the ×4 grid.
    five = np.sin(2 * np.pi * np.arange(size) / 5)[None, :] * np.ones((size, 1))
    assert grid_share(np.clip(image + 3 * five[..., None], 0, 255).round(), 4) < 1.5 * clean


def test_grid_share_of_a_pure_grid_pattern_is_all_and_of_flat_images_none() -> None:
    checker, _ = period_four(64, 64)
    assert grid_share(128 + 20 * checker, 4) == pytest.approx(1.0, abs=1e-6)
    assert grid_share(np.full((64, 64, 3), 77.0), 4) == 0.0
    assert grid_share(natural(64, 64), 1) == 0.0  # ×1: there is no input grid
    with pytest.raises(ValueError, match="at least 8×8"):
        grid_share(np.zeros((6, 40)), 4)


def test_chroma_error_is_zero_for_the_image_itself_and_a_fringe_shows_in_the_tail() -> None:
    rng = np.random.default_rng(1)
    hr = np.zeros((128, 128, 3))
    hr[:, :64] = 60  # a dark gray half and a light one: an edge down the middle
    hr[:, 64:] = 200
    hr += rng.normal(0, 2, size=hr.shape)
    hr = np.clip(hr, 0, 255).round()
    assert chroma_error(hr, hr) == (0.0, 0.0)
    # A faithful output with slight colour noise everywhere, then the same with a purple fringe along the edge.
    sr = np.clip(hr + rng.normal(0, 1.5, size=hr.shape), 0, 255).round()
    fringed = sr.copy()
    fringed[:, 62:66] += np.array([40.0, -30.0, 50.0])  # 4 columns of 128: 3 % of the pixels
    fringed = np.clip(fringed, 0, 255)
    rms, p99 = chroma_error(sr, hr)
    rms_f, p99_f = chroma_error(fringed, hr)
    print(f"\nchroma error: noise RMS {rms:.2f} p99 {p99:.2f}; with the fringe RMS {rms_f:.2f} p99 {p99_f:.2f}")
    assert 0 < rms < p99 < 5
    assert p99_f - p99 > 4 * (rms_f - rms) > 0
    assert p99_f > 20


def test_eval_reports_the_artefacts_beside_hr_and_bicubic(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    hr = natural(96, 96, seed=3).round().astype(np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr" / "pic.png")
    checker, _ = period_four(96, 96)

    def crosshatched(lr: np.ndarray) -> np.ndarray:
        """Nearest upscaling with a faint period-4 checkerboard: a model with a grid artefact."""
        big = lr.repeat(4, axis=0).repeat(4, axis=1).astype(np.float64)
        return np.asarray(np.clip(big + 3 * checker[..., None], 0, 255).round().astype(np.uint8))

    [score] = score_pairs(pair_images(tmp_path / "hr", None, 4), crosshatched, 4)
    assert score.grid_share is not None and score.grid_share_hr is not None
    assert score.grid_share_bicubic is not None and score.chroma_p99 is not None
    assert score.grid_share > 3 * score.grid_share_hr > 3 * score.grid_share_bicubic
    assert score.chroma_rms is not None and 0 < score.chroma_rms < score.chroma_p99
    assert mean_scores([score]).grid_share == score.grid_share

    r = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights", "none", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    image, mean = data["images"][0], data["mean"]
    for key in ("grid_share", "grid_share_bicubic", "grid_share_hr", "chroma_rms", "chroma_p99",
                "chroma_rms_bicubic", "chroma_p99_bicubic"):
        assert isinstance(image[key], float) and image[key] == mean[key], key
    assert image["grid_share_hr"] == pytest.approx(grid_share(hr[4:-4, 4:-4], 4))
    table = esrgan("eval", "bicubic", "--hr", tmp_path / "hr", "--perceptual-weights", "none")
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("artefacts"))
    assert lines[header].split() == ["artefacts", "grid", "%", "bicubic", "HR", "chroma", "p99", "bicubic", "p99"]
    assert lines[header + 1].split()[0] == "pic" and lines[header + 2].split()[0] == "mean"
    assert float(lines[header + 1].split()[3]) == pytest.approx(image["grid_share_hr"] * 100, abs=6e-4)
