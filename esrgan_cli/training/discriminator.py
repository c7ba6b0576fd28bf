"""The GAN stage's discriminator: the VGG-style network of SRGAN/ESRGAN for square HR patches.

Five stride-2 stages take a 128×128 patch to 4×4×(8·nf), then two linear layers give one raw score C(x); the
relativistic average loss in `trainer.py` turns scores into D_Ra. Other patch sizes work when they are multiples of 32.
"""

from __future__ import annotations

import torch
from torch import nn


def _stage(c_in: int, c_out: int, first_norm: bool) -> list[nn.Module]:
    """A 3×3 conv then a 4×4 stride-2 conv, each followed by batch norm (the very first conv has none)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=not first_norm)]
    if first_norm:
        layers.append(nn.BatchNorm2d(c_out, affine=True))
    layers += [
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 4, 2, 1, bias=False),
        nn.BatchNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    return layers


class VGGDiscriminator(nn.Module):
    def __init__(self, patch_size: int = 128, num_feat: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if patch_size % 32:
            raise ValueError(f"the discriminator needs a patch size that is a multiple of 32, got {patch_size}")
        widths = [num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            layers += _stage(c_in, width, first_norm=i > 0)
            c_in = width
        self.features = nn.Sequential(*layers)
        side = patch_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, 100), nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×P×P in [0, 1] → N×1 raw scores."""
        return self.classifier(self.features(x))
