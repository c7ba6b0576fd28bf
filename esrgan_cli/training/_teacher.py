"""Distillation: the target of the L1 and perceptual terms made from another model's output on the very LR the
student sees (`--teacher`), optionally mixed with the HR image, and a disk cache of those outputs (`--teacher-cache`).

A teacher's output is rounded to 8-bit levels, as the HR images are, whether it is computed or read from the cache,
so a run gives the same result with or without a cache, cold or warm. The cache keeps one file per batch (per
process) under a folder named by everything that decides the LR and the teacher: the teacher file's sha256, the
degradation and its settings, the seed, the batch and patch sizes, the scale and the training images' contents. A
resumed run finds its batches again; a changed teacher, degradation or data never does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from esrgan_cli.degrade.kernels import unsharp_mask
from esrgan_cli.errors import TrainError
from esrgan_cli.files import atomic_write, sha256_of

CACHE_FORMAT = 1  # bumped whenever what a cache file holds changes meaning
KEY_FILE = "key.json"


@dataclass(frozen=True)
class CacheKey:
    """What decides a batch's LR and the teacher's output on it (besides the sample numbers, in the file name)."""

    teacher_sha256: str
    degradation: str  # "bicubic", or "real:" and the settings' digest
    seed: int
    batch_size: int
    patch_size: int
    scale: int
    data: str  # data_fingerprint of the training images
    format: int = CACHE_FORMAT

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


def data_fingerprint(paths: list[Path], root: Path) -> str:
    """The training images' names (relative to the data folder) and contents, hashed."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


class TeacherCache:
    """DIR/<key digest>/<first sample>+<count>.npy: a batch's teacher outputs as N×C×H×W uint8."""

    def __init__(self, root: Path, key: CacheKey) -> None:
        self.key = key
        self.folder = Path(root) / key.digest()
        self.hits = 0
        self.misses = 0

    def _path(self, first: int, count: int) -> Path:
        return self.folder / f"{first:012d}+{count}.npy"

    def get(self, first: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """The cached batch of samples first.. (`shape` N×C×H×W), or None when absent. A file that is unreadable or
        holds the wrong shape is treated as absent (and rewritten by `put`), never trusted."""
        path = self._path(first, shape[0])
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        if array.dtype != np.uint8 or array.shape != shape:
            self.misses += 1
            return None
        self.hits += 1
        return array

    def put(self, first: int, array: np.ndarray) -> None:
        """Store a batch, atomically: a reader sees the whole file or none."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / KEY_FILE).exists():
                with atomic_write(self.folder / KEY_FILE) as tmp:
                    tmp.write_text(json.dumps(asdict(self.key), indent=2, sort_keys=True) + "\n", encoding="utf-8")
            with atomic_write(self._path(first, len(array))) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        except OSError as e:
            raise TrainError(f"{self.folder}: cannot write the teacher cache ({e.strerror or e})") from None


class Teacher:
    """A frozen model whose outputs, rounded to 8-bit levels, become the targets."""

    def __init__(self, model: nn.Module, scale: int, cache: TeacherCache | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.scale = scale
        self.cache = cache

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, first: int) -> torch.Tensor:
        """The teacher's output on the batch `lr` (samples first, first+1, ...), in [0, 1], on lr's device."""
        if self.cache is not None:
            n, c, h, w = lr.shape
            s = self.scale
            found = self.cache.get(first, (n, c, h * s, w * s))
            if found is not None:
                return torch.from_numpy(found).to(lr.device).float() / 255
        out = (self.model(lr.float()).clamp(0, 1) * 255).round().to(torch.uint8)
        if self.cache is not None:
            self.cache.put(first, out.cpu().numpy())
        return out.float() / 255


def make_target(lr: torch.Tensor, hr: torch.Tensor, *, sharpen: bool, teacher: Teacher | None, weight: float,
                first: int) -> torch.Tensor:
    """What the output is compared with: the HR patch (unsharp-masked with `sharpen`), or the teacher's output on
    `lr` mixed with it as weight·teacher + (1 - weight)·HR."""
    base = unsharp_mask(hr) if sharpen else hr
    if teacher is None:
        return base
    taught = teacher(lr, first)
    return taught if weight == 1 else weight * taught + (1 - weight) * base


def load_teacher(spec: str, scale: int, device: torch.device) -> tuple[nn.Module, str]:
    """The teacher model `spec` (a registry name, a weights file or hf:...) on `device`, and its file's sha256."""
    from esrgan_cli.model.registry import load_named
    from esrgan_cli.model.weights import build_model

    weights = load_named(spec)
    if weights.config.scale != scale:
        raise TrainError(f"the teacher {spec} is a x{weights.config.scale} model; the run trains x{scale}")
    if weights.config.in_channels != 3 or weights.config.out_channels != 3:
        raise TrainError(f"the teacher {spec} is not an RGB model")
    return build_model(weights).to(device), sha256_of(weights.path)
