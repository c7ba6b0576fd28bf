"""The real-world degradation (Real-ESRGAN's model): its kernels, noise and JPEG checked against their definitions and
Pillow's encoder, and its random stream against the seed, the iteration and the data loader's workers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader, default_collate

from esrgan_cli.degrade._jpeg import jpeg, quant_tables
from esrgan_cli.degrade.degradation import (
    DegradationConfig,
    DegradationStage,
    add_noise,
    degrade,
    draw_batch,
    draw_sample,
)
from esrgan_cli.degrade.kernels import (
    GAUSSIAN,
    GENERALIZED,
    PLATEAU,
    blur_kernels,
    filter_each,
    identity_kernels,
    sinc_kernels,
)
from esrgan_cli.training._data import ImageSet, IterationSampler, PatchPairs, RealPatches

from conftest import ROOT, random_image

GRID = 21


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _analytic(shape: int, sx: float, sy: float, theta: float, beta: float, size: int) -> np.ndarray:
    """The paper's kernel formulas, written out independently with numpy (Σ built and inverted explicitly)."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
    half = size // 2
    k = np.zeros((GRID, GRID))
    for i in range(GRID):
        for j in range(GRID):
            c = np.array([j - GRID // 2, i - GRID // 2])  # (x, y)
            if max(abs(c[0]), abs(c[1])) > half:
                continue
            q = c @ inv @ c
            k[i, j] = math.exp(-q / 2) if shape == GAUSSIAN else math.exp(-(q**beta) / 2) if shape == GENERALIZED \
                else 1 / (1 + q**beta)
    return k / k.sum()


# -- kernels --------------------------------------------------------------------------------------------------


def test_blur_kernels_sum_to_one_and_match_their_analytic_forms() -> None:
    cases = [(GAUSSIAN, 1.5, 1.5, 0.0, 1.0, 21), (GAUSSIAN, 2.5, 0.7, 0.6, 1.0, 15),
             (GENERALIZED, 1.2, 1.2, 0.0, 0.5, 11), (GENERALIZED, 2.8, 1.1, -2.0, 3.7, 21),
             (PLATEAU, 1.0, 1.0, 0.0, 1.6, 9), (PLATEAU, 0.4, 2.2, 3.0, 1.2, 7)]
    shape, sx, sy, theta, beta, size = (list(col) for col in zip(*cases, strict=True))
    got = blur_kernels(torch.tensor(shape), torch.tensor(list(zip(sx, sy, strict=True)), dtype=torch.float64),
                       _t(*theta), _t(*beta), torch.tensor(size), GRID)
    assert got.shape == (len(cases), GRID, GRID) and got.dtype == torch.float32
    assert torch.allclose(got.sum(dim=(1, 2)), torch.ones(len(cases)), atol=1e-6)
    for k, case in zip(got, cases, strict=True):
        np.testing.assert_allclose(k.double().numpy(), _analytic(*case), atol=1e-7, err_msg=str(case))
    # β = 1 makes the generalized Gaussian the Gaussian.
    g = blur_kernels(torch.tensor([GAUSSIAN, GENERALIZED]), _t(1.7, 0.9).expand(2, 2), _t(0.3, 0.3), _t(1, 1),
                     torch.tensor([21, 21]), GRID)
    assert torch.allclose(g[0], g[1], atol=1e-8)


def test_an_anisotropic_gaussian_has_its_covariance() -> None:
    """Its second moments are Σ = R(θ)·diag(σx², σy²)·R(θ)ᵀ (with a grid wide enough not to cut it)."""
    sx, sy, theta = 2.0, 0.8, math.pi / 6
    k = blur_kernels(torch.tensor([GAUSSIAN]), _t(sx, sy)[None], _t(theta), _t(1), torch.tensor([41]), 41)[0].double()
    ax = torch.arange(41, dtype=torch.float64) - 20
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    cov = np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    np.testing.assert_allclose(cov, rot @ np.diag([sx**2, sy**2]) @ rot.T, atol=1e-3)


def _half_amplitude(response: np.ndarray, freqs: np.ndarray) -> float:
    """The frequency where a falling response first crosses 0.5, interpolated linearly."""
    i = int(np.argmax(response < 0.5))
    return float(freqs[i - 1] + (0.5 - response[i - 1]) / (response[i] - response[i - 1]) * (freqs[i] - freqs[i - 1]))


def test_a_sinc_filters_cutoff_is_where_it_should_be() -> None:
    """The 21-tap filter's frequency response (a 1024-point DFT) falls through half its DC gain at the cutoff ω, the
    same along an axis and a diagonal (it is circular), passes below it and stops above it."""
    omegas = [math.pi / 5, math.pi / 3, math.pi / 2, 2 * math.pi / 3, 0.9 * math.pi]
    kernels = sinc_kernels(_t(*omegas), torch.tensor([21] * 5), GRID).double().numpy()
    assert np.allclose(kernels.sum(axis=(1, 2)), 1)
    n = 1024
    freqs = np.fft.fftfreq(n)[: n // 2] * 2 * math.pi
    errors = []
    for omega, k in zip(omegas, kernels, strict=True):
        response = np.abs(np.fft.fft2(k, s=(n, n)))
        axis = response[0, : n // 2]
        diagonal = np.array([response[j, j] for j in range(n // 2)])
        errors += [_half_amplitude(axis, freqs) - omega, _half_amplitude(diagonal, freqs * math.sqrt(2)) - omega]
        assert axis[freqs < omega / 2].mean() > 0.9
        if omega < 0.6 * math.pi:
            assert axis[freqs > 1.5 * omega].mean() < 0.05
    print(f"\nsinc cutoff error (rad/pixel) over ω = π/5..0.9π, axis and diagonal: max {max(map(abs, errors)):.4f}")
    assert max(map(abs, errors)) < 0.04


def test_filtering_applies_each_images_own_kernel() -> None:
    x = torch.rand(3, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    kernels = torch.cat([identity_kernels(1, 7), blur_kernels(torch.tensor([GAUSSIAN] * 2), _t(1, 1, 2, 2).view(2, 2),
                                                                _t(0, 0), _t(1, 1), torch.tensor([7, 5]), 7)])
    out = filter_each(x, kernels)
    assert torch.equal(out[0], x[0])
    # The middle of image 1 is its own convolution with its own kernel, whatever the others are.
    alone = torch.nn.functional.conv2d(x[1:2].transpose(0, 1), kernels[1][None, None].float()).transpose(0, 1)
    assert torch.allclose(out[1:2, :, 3:-3, 3:-3], alone, atol=1e-6)
    assert not torch.allclose(out[1], out[2])


# -- noise --------------------------------------------------------------------------------------------------


def test_noise_has_the_requested_sigma() -> None:
    flat = torch.full((6, 3, 96, 96), 0.4)
    sigma = _t(2, 8, 25, 0.5, 1.5, 3)
    gaussian = torch.tensor([True, True, True, False, False, False])
    gray = torch.tensor([False, True, False, False, True, False])
    out = add_noise(flat, gaussian, sigma, gray, torch.arange(6) * 1000 + 7)
    noise = (out - flat).double()
    measured = noise.std(dim=(1, 2, 3)) * 255
    # Poisson noise on a level of 0.4 counts round(0.4·255) = 102 photons: its sigma is scale·√102 levels.
    expected = torch.where(gaussian, sigma, sigma * math.sqrt(102))
    error = (measured / expected - 1).abs()
    print(f"\nnoise sigma relative error: {', '.join(f'{e:.3%}' for e in error.tolist())}")
    assert error.max() < 0.03
    assert noise.mean(dim=(1, 2, 3)).abs().max() * 255 < 0.1 * expected.max()
    for i in range(6):  # gray noise is the same in every channel; colour noise is not
        assert torch.equal(noise[i, 0], noise[i, 1]) == bool(gray[i])
    again = add_noise(flat, gaussian, sigma, gray, torch.arange(6) * 1000 + 7)
    assert torch.equal(again, out)


# -- JPEG -------------------------------------------------------------------------------------------------


def test_quantisation_tables_are_libjpegs_as_pillow_writes_them() -> None:
    image = Image.open(ROOT / "examples" / "cottage.png").convert("RGB")
    qualities = torch.arange(1, 101)
    luma, chroma = quant_tables(qualities)
    for q in (1, 10, 25, 49, 50, 51, 75, 90, 100):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=q)
        tables = Image.open(io.BytesIO(buf.getvalue())).quantization
        assert luma[q - 1].flatten().int().tolist() == list(tables[0]), q
        assert chroma[q - 1].flatten().int().tolist() == list(tables[1]), q


def _pillow_jpeg(rgb: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# dB against Pillow's decoded JPEG. jpeg.py does libjpeg's integer arithmetic, so with libjpeg-turbo (Pillow's
# wheels) the two are identical; another libjpeg (IJG 9 scales its DCT differently) may differ a little.
JPEG_PSNR_FLOOR = 50.0


def test_jpeg_matches_pillows_encoder_at_each_quality() -> None:
    """Whole 16-pixel blocks and a ragged size, a photo and noise: within JPEG_PSNR_FLOOR dB of what Pillow encodes
    and decodes at the same quality, each image of the batch at its own quality; identical with libjpeg-turbo."""
    photo = np.asarray(Image.open(ROOT / "examples" / "cottage.png").convert("RGB"))
    noisy = (random_image(75, 101, seed=3) * 255).round().astype(np.uint8)
    qualities = [5, 10, 30, 50, 75, 90, 95, 100]
    turbo = features.check_feature("libjpeg_turbo")
    lines = []
    for kind, rgb in (("photo", photo[:96, :128]), ("noise", noisy)):
        batch = torch.from_numpy(np.stack([rgb] * len(qualities))).permute(0, 3, 1, 2).float() / 255
        out = jpeg(batch, torch.tensor(qualities))
        assert out.shape == batch.shape
        for q, img in zip(qualities, out, strict=True):
            ours = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            pillow = _pillow_jpeg(rgb, q)
            close, loss = _psnr8(ours, pillow), _psnr8(rgb, pillow)
            lines.append(f"{kind} {rgb.shape[1]}x{rgb.shape[0]} q{q}: {close:.1f} dB to Pillow "
                         f"(Pillow's own loss {loss:.1f} dB)")
            assert close > JPEG_PSNR_FLOOR, lines[-1]
            assert np.array_equal(ours, pillow) or not turbo, lines[-1]
    print("\n" + "\n".join(lines))


# -- the random stream ------------------------------------------------------------------------------------


@pytest.fixture
def patches(tmp_path: Path) -> RealPatches:
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        img = (random_image(48, 56, seed=i) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return RealPatches(ImageSet(folder, 32), 32, 4, seed=11, degradation=DegradationConfig())


def _lr_batches(patches: RealPatches, workers: int, iterations: range, batch: int = 4) -> list[torch.Tensor]:
    loader = DataLoader(patches, batch_sampler=IterationSampler(iterations.start, iterations.stop, batch),
                        num_workers=workers)
    return [degrade(hr, draws, draw_batch(patches.degradation, patches.seed, it), 4)
            for it, (hr, draws) in zip(iterations, loader, strict=True)]


def test_a_fixed_seed_gives_identical_batches(patches: RealPatches) -> None:
    first, again = _lr_batches(patches, 0, range(5, 9)), _lr_batches(patches, 0, range(5, 9))
    assert all(a.shape == (4, 3, 8, 8) for a in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # The LR images are 8-bit levels, and they differ from image to image and from batch to batch.
    assert torch.equal(first[0], (first[0] * 255).round() / 255)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0][0], first[0][1])
    other = RealPatches(patches.images, 32, 4, seed=12, degradation=patches.degradation)
    assert not torch.equal(_lr_batches(other, 0, range(5, 6))[0], first[0])
    # The HR patch of sample k is PatchPairs' sample k: the degradation changes the LR only.
    assert torch.equal(patches[21][0], PatchPairs(patches.images, 32, 4, seed=11)[21][1])


def test_two_workers_and_one_give_the_same_stream(patches: RealPatches) -> None:
    serial, parallel = _lr_batches(patches, 0, range(2, 6)), _lr_batches(patches, 2, range(2, 6))
    assert len(serial) == 4 and all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_each_sample_draws_alone_and_each_batch_by_its_iteration() -> None:
    config = DegradationConfig()
    together = default_collate([draw_sample(config, 3, k) for k in (40, 41, 42)])
    alone = draw_sample(config, 3, 41)
    assert all(torch.equal(together[key][1], alone[key]) for key in alone)
    assert draw_batch(config, 3, 10) == draw_batch(config, 3, 10) != draw_batch(config, 3, 11)


def test_the_draws_follow_the_published_distributions() -> None:
    """Over many samples: kernel sizes 7..21, sigma ranges, sinc and noise probabilities, JPEG 30..95."""
    config = DegradationConfig()
    d = default_collate([draw_sample(config, 0, k) for k in range(2000)])
    b = [draw_batch(config, 0, it) for it in range(2000)]
    assert set(d["size1"].tolist()) == set(range(7, 22, 2))
    gauss = d["kind1"] < 3
    assert 0.2 <= d["sigma1"][gauss].min() and d["sigma1"][gauss].max() <= 3.0
    assert d["sigma2"][d["kind2"] < 3].max() <= 1.5
    assert abs((~gauss).float().mean() - 0.1) < 0.03 and abs(d["sinc"].float().mean() - 0.8) < 0.03
    assert abs(d["blur2"].float().mean() - 0.8) < 0.03 and bool(d["blur1"].all())
    assert abs(d["gaussian1"].float().mean() - 0.5) < 0.04 and abs(d["gray2"].float().mean() - 0.4) < 0.04
    assert d["quality1"].min() == 30 and d["quality2"].max() == 95
    noise = d["noise1"][d["gaussian1"]]
    assert 1 <= noise.min() and noise.max() <= 30 and d["noise2"][d["gaussian2"]].max() <= 25
    assert d["noise1"][~d["gaussian1"]].max() <= 3 and d["noise2"][~d["gaussian2"]].max() <= 2.5
    assert min(x.scale1 for x in b) >= 0.15 and max(x.scale1 for x in b) <= 1.5
    down = np.mean([x.scale1 < 1 for x in b])
    assert abs(down - 0.7) < 0.04 and abs(np.mean([x.jpeg_last for x in b]) - 0.5) < 0.04


def test_settings_are_overridden_by_a_json_object() -> None:
    given = '{"final_sinc_prob": 0.5, "second": {"jpeg_quality": [60, 90]}}'
    config = DegradationConfig().overridden(json.loads(given))
    assert config.final_sinc_prob == 0.5 and config.second.jpeg_quality == (60, 90)
    assert config.second.noise_sigma == (1.0, 25.0) and config.first == DegradationStage()
    assert DegradationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.digest() != DegradationConfig().digest()
    with pytest.raises(ValueError, match="unknown degradation setting second.jpeg"):
        DegradationConfig().overridden({"second": {"jpeg": [1, 2]}})
    with pytest.raises(ValueError, match="kernel_probs must be 6 probabilities"):
        DegradationConfig().overridden({"first": {"kernel_probs": [0.5, 0.5]}})
    with pytest.raises(ValueError, match="jpeg_quality must be integers"):
        DegradationConfig().overridden({"first": {"jpeg_quality": [30, 101]}})
    with pytest.raises(ValueError, match="kernel_sizes must be odd"):
        DegradationConfig().overridden({"kernel_sizes": [6, 21]})
