"""Benchmark evaluation: a model (or bicubic) against HR images, scored as the literature does.

HR images are cropped to a multiple of the scale; their LR twins are read from a folder or made with MATLAB-style
bicubic downscaling. Outputs are rounded to 8 bits before scoring, as saved images would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esrgan_cli.defaults import DEFAULT_OVERLAP
from esrgan_cli.engine import Upscaler
from esrgan_cli.errors import EsrganError, ImageReadError
from esrgan_cli.imageio import image_files, read_image, to_uint8
from esrgan_cli.metrics import psnr_y, ssim_y
from esrgan_cli.pipeline import upscale_array
from esrgan_cli.resize import imresize, modcrop

Upscale = Callable[[np.ndarray], np.ndarray]
"""An H×W×3 uint8 image → (H·s)×(W·s)×3 uint8."""


class EvalDataError(EsrganError):
    """The HR/LR folders cannot be paired."""


@dataclass(frozen=True)
class EvalPair:
    name: str
    hr: Path
    lr: Path | None  # None: made from the HR image


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr: float
    ssim: float
    psnr_bicubic: float
    ssim_bicubic: float


@dataclass(frozen=True)
class Summary:
    psnr: float
    ssim: float
    psnr_bicubic: float
    ssim_bicubic: float


def pair_images(hr_dir: Path, lr_dir: Path | None, scale: int) -> list[EvalPair]:
    """HR images, each with its LR twin when `lr_dir` is given (named alike, or with an `x{scale}` suffix)."""
    if not Path(hr_dir).is_dir():
        raise EvalDataError(f"{hr_dir}: not a folder")
    hrs = image_files(hr_dir)
    if lr_dir is not None:
        lr_root = Path(lr_dir).resolve()
        hrs = [p for p in hrs if lr_root not in p.resolve().parents]  # --hr Set5 --lr Set5/LR_bicubic/X4
    if not hrs:
        raise EvalDataError(f"{hr_dir}: no images found")
    if lr_dir is None:
        return [EvalPair(p.stem, p, None) for p in hrs]
    if not Path(lr_dir).is_dir():
        raise EvalDataError(f"{lr_dir}: not a folder")
    lrs = {p.stem.lower(): p for p in image_files(lr_dir)}
    pairs = []
    for p in hrs:
        lr = lrs.get(p.stem.lower()) or lrs.get(f"{p.stem}x{scale}".lower())
        if lr is None:
            raise EvalDataError(f"{p}: no LR image named {p.stem} or {p.stem}x{scale} in {lr_dir}")
        pairs.append(EvalPair(p.stem, p, lr))
    return pairs


def bicubic(scale: int) -> Upscale:
    """MATLAB-style bicubic upscaling by `scale`, the baseline every model is compared to."""
    def run(lr: np.ndarray) -> np.ndarray:
        return imresize(lr, size=(lr.shape[0] * scale, lr.shape[1] * scale))

    return run


def load_pair(pair: EvalPair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) as uint8 H×W×3, the HR cropped to a multiple of `scale` and matching the LR."""
    hr = modcrop(to_uint8(read_image(pair.hr).rgb), scale)
    if pair.lr is None:
        return hr, imresize(hr, 1 / scale)
    lr = to_uint8(read_image(pair.lr).rgb)
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise ImageReadError(
            f"{pair.lr}: {lr.shape[1]}×{lr.shape[0]} is not 1/{scale} of {pair.hr} "
            f"({hr.shape[1]}×{hr.shape[0]} after cropping to a multiple of {scale})"
        )
    return hr, lr


def score_pairs(pairs: list[EvalPair], upscale: Upscale, scale: int) -> Iterator[ImageScore]:
    """Score each image as it is done (Y channel, `scale` border pixels cropped)."""
    baseline = bicubic(scale)
    for pair in pairs:
        hr, lr = load_pair(pair, scale)
        sr = upscale(lr)
        if sr.shape != hr.shape:
            raise EsrganError(f"{pair.name}: the model gave {sr.shape[1]}×{sr.shape[0]}, expected "
                              f"{hr.shape[1]}×{hr.shape[0]}")
        bic = baseline(lr)
        yield ImageScore(
            pair.name, psnr_y(sr, hr, scale), ssim_y(sr, hr, scale), psnr_y(bic, hr, scale), ssim_y(bic, hr, scale)
        )


def with_upscaler(upscaler: Upscaler, tile: int | None = None, overlap: int = DEFAULT_OVERLAP) -> Upscale:
    """A model on its device as an 8-bit image upscaler; `tile` None picks whole images or tiles per memory budget."""
    def run(lr: np.ndarray) -> np.ndarray:
        canvas, _ = upscale_array(lr.astype(np.float32) / 255.0, upscaler, upscaler.scale, tile, overlap,
                                  np.dtype(np.uint8),
                                  upscaler.align)
        return canvas

    return run


def summarize(scores: list[ImageScore]) -> Summary:
    """Means over images (PSNR averaged in dB, as the literature's tables do)."""
    def mean(values: list[float]) -> float:
        return math.fsum(values) / len(values)

    return Summary(
        mean([s.psnr for s in scores]), mean([s.ssim for s in scores]),
        mean([s.psnr_bicubic for s in scores]), mean([s.ssim_bicubic for s in scores]),
    )
