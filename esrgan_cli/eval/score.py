"""Benchmark evaluation: a model (or bicubic) against HR images, scored as the literature does.

HR images are cropped to a multiple of the scale; their LR twins are read from a folder or made from the HR image by
a `Degradation` (MATLAB-style bicubic downscaling unless told otherwise). Outputs are rounded to 8 bits before
scoring, as saved images would be. An optional perceptual distance (`perceptual_distance.py`, or any function of two
images) is reported beside PSNR and SSIM, on the same pixels, and so are two artefact figures (`artefacts.py`): the
grid share (beside the HR image's own) and the chroma error to HR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esrgan_cli.defaults import DEFAULT_OVERLAP
from esrgan_cli.errors import EsrganError, EvalDataError, ImageReadError
from esrgan_cli.eval._metrics import crop_border, psnr_y, ssim_y
from esrgan_cli.eval.artefacts import chroma_error, grid_share
from esrgan_cli.files import image_files
from esrgan_cli.image.decode import read_image
from esrgan_cli.image.encode import to_uint8
from esrgan_cli.image.resize import imresize, modcrop
from esrgan_cli.upscale.upscaler import Upscaler

Upscale = Callable[[np.ndarray], np.ndarray]
"""An H×W×3 uint8 image → (H·s)×(W·s)×3 uint8."""

MakeLR = Callable[[np.ndarray, int, str], np.ndarray]
"""(HR image, H×W×3 uint8 with H and W multiples of the scale; the scale; the image's name) → its LR twin,
(H/s)×(W/s)×3 uint8. The name is there so that a random degradation can seed each image by itself (from a seed and
the name), which keeps every image's LR the same whatever the set's order or size."""

Distance = Callable[[np.ndarray, np.ndarray], float]
"""A perceptual distance of two same-size H×W×3 uint8 images: 0 for equal images, lower is better."""



@dataclass(frozen=True)
class EvalPair:
    name: str
    hr: Path
    lr: Path | None  # None: made from the HR image


@dataclass(frozen=True)
class Degradation:
    """How LR images are made from HR ones when no LR folder is given."""

    name: str  # for reports
    make: MakeLR


def _bicubic_lr(hr: np.ndarray, scale: int, name: str) -> np.ndarray:
    return imresize(hr, 1 / scale)


BICUBIC = Degradation("bicubic", _bicubic_lr)
"""MATLAB-style antialiased bicubic downscaling: the benchmarks' own (it reproduces Set5/Set14's LR_bicubic files)."""


_ARTEFACTS = ("grid_share", "chroma_rms", "chroma_p99", "grid_share_bicubic", "chroma_rms_bicubic",
              "chroma_p99_bicubic", "grid_share_hr")


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Scores of a model against the references, beside bicubic's: one image's, or the means over a set."""
    psnr: float
    ssim: float
    psnr_bicubic: float
    ssim_bicubic: float
    perceptual: float | None = None  # None: no perceptual distance was computed
    perceptual_bicubic: float | None = None
    # Artefacts (`artefacts.py`), of the model's output and bicubic's: the grid share (0..1), beside the HR image's
    # own, and the chroma error to HR (a*b* units, RMS and 99th percentile). `score_pairs` always fills them.
    grid_share: float | None = None
    chroma_rms: float | None = None
    chroma_p99: float | None = None
    grid_share_bicubic: float | None = None
    chroma_rms_bicubic: float | None = None
    chroma_p99_bicubic: float | None = None
    grid_share_hr: float | None = None


@dataclass(frozen=True, kw_only=True)
class ImageScore(Summary):
    """One image's scores."""
    name: str


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


def load_pair(pair: EvalPair, scale: int, degradation: Degradation = BICUBIC) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) as uint8 H×W×3, the HR cropped to a multiple of `scale` and matching the LR, which is read from
    `pair.lr` or made by `degradation`."""
    hr = modcrop(to_uint8(read_image(pair.hr).rgb), scale)
    if pair.lr is None:
        lr = degradation.make(hr, scale, pair.name)
        if lr.shape != (hr.shape[0] // scale, hr.shape[1] // scale, 3) or lr.dtype != np.uint8:
            raise EsrganError(f"{pair.name}: the {degradation.name} degradation gave a {lr.dtype} image of shape "
                              f"{lr.shape}, not 1/{scale} of the HR image in uint8")
        return hr, lr
    lr = to_uint8(read_image(pair.lr).rgb)
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise ImageReadError(
            f"{pair.lr}: {lr.shape[1]}×{lr.shape[0]} is not 1/{scale} of {pair.hr} "
            f"({hr.shape[1]}×{hr.shape[0]} after cropping to a multiple of {scale})"
        )
    return hr, lr


def score_pairs(pairs: list[EvalPair], upscale: Upscale, scale: int, degradation: Degradation = BICUBIC,
                distance: Distance | None = None) -> Iterator[ImageScore]:
    """Score each image as it is done (Y channel, `scale` border pixels cropped; the perceptual distance, when
    given, on the RGB image with the same border cropped)."""
    baseline = bicubic(scale)
    for pair in pairs:
        hr, lr = load_pair(pair, scale, degradation)
        sr = upscale(lr)
        if sr.shape != hr.shape:
            raise EsrganError(f"{pair.name}: the model gave {sr.shape[1]}×{sr.shape[0]}, expected "
                              f"{hr.shape[1]}×{hr.shape[0]}")
        bic = baseline(lr)
        perceptual = perceptual_bicubic = None
        inner = crop_border(hr, scale)
        if distance is not None:
            perceptual = distance(crop_border(sr, scale), inner)
            perceptual_bicubic = distance(crop_border(bic, scale), inner)
        grid, chroma_rms, chroma_p99 = artefacts(crop_border(sr, scale), inner, scale)
        grid_bic, chroma_rms_bic, chroma_p99_bic = artefacts(crop_border(bic, scale), inner, scale)
        yield ImageScore(
            name=pair.name, psnr=psnr_y(sr, hr, scale), ssim=ssim_y(sr, hr, scale),
            psnr_bicubic=psnr_y(bic, hr, scale), ssim_bicubic=ssim_y(bic, hr, scale),
            perceptual=perceptual, perceptual_bicubic=perceptual_bicubic,
            grid_share=grid, chroma_rms=chroma_rms, chroma_p99=chroma_p99, grid_share_bicubic=grid_bic,
            chroma_rms_bicubic=chroma_rms_bic, chroma_p99_bicubic=chroma_p99_bic,
            grid_share_hr=grid_share(inner, scale),
        )


def artefacts(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float, float]:
    """The grid share of `sr` and its chroma error to `hr`, RMS and 99th percentile (same-size 8-bit RGB images,
    border already cropped)."""
    return (grid_share(sr, scale), *chroma_error(sr, hr))


def with_upscaler(upscaler: Upscaler, tile: int | None = None, overlap: int = DEFAULT_OVERLAP) -> Upscale:
    """A model on its device as an 8-bit image upscaler; `tile` None picks whole images or tiles per memory budget."""
    def run(lr: np.ndarray) -> np.ndarray:
        return upscaler.upscale(lr, tile=tile, overlap=overlap)

    return run


def mean_scores(scores: list[ImageScore]) -> Summary:
    """Means over images (PSNR averaged in dB, as the literature's tables do)."""
    def mean(values: list[float]) -> float:
        return math.fsum(values) / len(values)

    def mean_or_none(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return mean(known) if known and len(known) == len(values) else None

    return Summary(
        psnr=mean([s.psnr for s in scores]), ssim=mean([s.ssim for s in scores]),
        psnr_bicubic=mean([s.psnr_bicubic for s in scores]), ssim_bicubic=mean([s.ssim_bicubic for s in scores]),
        perceptual=mean_or_none([s.perceptual for s in scores]),
        perceptual_bicubic=mean_or_none([s.perceptual_bicubic for s in scores]),
        **{name: mean_or_none([getattr(s, name) for s in scores]) for name in _ARTEFACTS},
    )
