"""A reproducible real-world LR set: Real-ESRGAN's degradation (training/degradation.py) applied to whole HR
images for `esrgan eval --degradation real`, each image's draws a pure function of the seed and its name."""

from __future__ import annotations

import hashlib

import numpy as np

from esrgan_cli.degrade.degradation import DegradationConfig
from esrgan_cli.eval.score import Degradation


def image_number(name: str) -> int:
    """A stable number for an image name (the same on every machine and Python), where training uses the sample
    number."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:7], "big")


def real_degradation(seed: int, config: DegradationConfig | None = None) -> Degradation:
    """Real-ESRGAN's two-round blur, resize, noise and JPEG; image NAME gets the draws training would give sample
    `image_number(NAME)` of a run with `seed`, so the set is the same for everyone with the same HR files."""
    import torch

    from esrgan_cli.degrade.degradation import degrade, draw_batch, draw_sample

    settings = config or DegradationConfig()

    def make(hr: np.ndarray, scale: int, name: str) -> np.ndarray:
        k = image_number(name)
        draws = {key: value.unsqueeze(0) for key, value in draw_sample(settings, seed, k).items()}
        x = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1).unsqueeze(0).float() / 255
        lr = degrade(x, draws, draw_batch(settings, seed, k), scale)
        return (lr[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()

    return Degradation(f"real (seed {seed}, settings {settings.digest()[:12]})", make)
