"""Training pairs: random HR crops with flips and 90° turns, their LR made on the fly by MATLAB-style bicubic (or,
for the real-world degradation, the random draws the trainer makes it with on its device).

Every sample is a pure function of (seed, sample number): the same run draws the same patches whatever the number
of DataLoader workers or processes, and a resumed run needs only the iteration count to continue the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from esrgan_cli.degrade.degradation import DegradationConfig, draw_sample
from esrgan_cli.errors import ImageReadError, TrainingDataError
from esrgan_cli.files import image_files
from esrgan_cli.image.decode import read_image
from esrgan_cli.image.encode import to_uint8
from esrgan_cli.image.resize import imresize

DEFAULT_CACHE_BYTES = 2 << 30



@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


class ImageSet:
    """The usable HR images of a folder (recursive), as 8-bit RGB; decoded once, kept in memory up to a budget."""

    def __init__(self, folder: Path, min_side: int, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 listed: Callable[[int], None] | None = None) -> None:
        """`listed` hears how many image files were found, before any is decoded (decoding them takes a while)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TrainingDataError(f"{folder}: not a folder")
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self._cache: list[np.ndarray | None] = []
        self.skipped: list[Skipped] = []
        cached = 0
        files = image_files(folder)
        if listed is not None:
            listed(len(files))
        for path in files:
            try:
                image = self._decode(path)
            except ImageReadError as e:
                self.skipped.append(Skipped(path, str(e).removeprefix(f"{path}: ")))
                continue
            h, w = image.shape[:2]
            if min(h, w) < min_side:
                self.skipped.append(Skipped(path, f"{w}×{h} is smaller than the {min_side}-pixel patch"))
                continue
            self.paths.append(path)
            self.sizes.append((h, w))
            keep = cached + image.nbytes <= cache_bytes
            cached += image.nbytes if keep else 0
            self._cache.append(image if keep else None)
        if not self.paths:
            raise TrainingDataError(
                f"{folder}: no usable training image (need {min_side}×{min_side} pixels or more; "
                f"{len(self.skipped)} skipped)"
            )

    @staticmethod
    def _decode(path: Path) -> np.ndarray:
        return to_uint8(read_image(path).rgb)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        image = self._cache[i]
        return image if image is not None else self._decode(self.paths[i])


def augment(image: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips and 90° turns (code 0 is the identity)."""
    out = np.rot90(image, code % 4)
    return out[:, ::-1] if code >= 4 else out


class PatchPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Sample k → (LR 3×p/s×p/s, HR 3×p×p) float tensors in [0, 1], drawn by a generator seeded with (seed, k)."""

    def __init__(self, images: ImageSet, patch: int, scale: int, seed: int) -> None:
        if patch % scale:
            raise ValueError(f"the patch size {patch} must be a multiple of the scale {scale}")
        self.images, self.patch, self.scale, self.seed = images, patch, scale, seed
        # The cubic kernel reaches 2·scale HR pixels each side; with this margin the LR patch equals the same
        # crop of the whole image downscaled (mirrored only at the image's own borders, as whole-image LR is).
        self.margin = 3 * scale

    def __len__(self) -> int:
        return 1 << 62  # samples are numbered, not listed; the sampler decides which ones a run uses

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        image, y, x = _place(rng, self.images, self.patch, self.scale)
        s, p, m = self.scale, self.patch, self.margin
        h, w = (image.shape[0] // s) * s, (image.shape[1] // s) * s
        y0, x0 = max(0, y - m), max(0, x - m)
        region = image[y0 : min(h, y + p + m), x0 : min(w, x + p + m)]
        lr = imresize(region, 1 / s)
        ly, lx = (y - y0) // s, (x - x0) // s
        lr = lr[ly : ly + p // s, lx : lx + p // s]
        hr = image[y : y + p, x : x + p]
        code = int(rng.integers(8))
        return _tensor(augment(lr, code)), _tensor(augment(hr, code))


class RealPatches(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Sample k → (HR 3×p×p in [0, 1], its draws for the real-world degradation): the same HR patch as PatchPairs'
    sample k; the trainer makes the LR from both on its device (degradation.py)."""

    def __init__(self, images: ImageSet, patch: int, scale: int, seed: int, degradation: DegradationConfig) -> None:
        if patch % scale:
            raise ValueError(f"the patch size {patch} must be a multiple of the scale {scale}")
        self.images, self.patch, self.scale, self.seed, self.degradation = images, patch, scale, seed, degradation

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, k])
        image, y, x = _place(rng, self.images, self.patch, self.scale)
        hr = image[y : y + self.patch, x : x + self.patch]
        return _tensor(augment(hr, int(rng.integers(8)))), draw_sample(self.degradation, self.seed, k)


def _place(rng: np.random.Generator, images: ImageSet, patch: int, scale: int) -> tuple[np.ndarray, int, int]:
    """A random image and the top-left corner of a patch in it, on the scale's grid."""
    image = images[int(rng.integers(len(images)))]
    h, w = (image.shape[0] // scale) * scale, (image.shape[1] // scale) * scale
    y = scale * int(rng.integers((h - patch) // scale + 1))
    return image, y, scale * int(rng.integers((w - patch) // scale + 1))


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class IterationSampler(Sampler[list[int]]):
    """Batches of sample numbers for iterations [start, stop): this rank's share of the global batch."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"the batch size {batch_size} must be a multiple of the {world} processes")
        self.start, self.stop, self.batch_size, self.rank, self.world = start, stop, batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch_size // self.world
        for it in range(self.start, self.stop):
            first = it * self.batch_size + self.rank * local
            yield list(range(first, first + local))
