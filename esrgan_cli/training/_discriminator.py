"""The GAN stage's discriminators: the VGG-style network of SRGAN/ESRGAN for square HR patches (the default), and
Real-ESRGAN's U-Net with spectral normalisation (`--discriminator unet`).

VGG: five stride-2 stages take a 128×128 patch to 4×4×(8·nf), then two linear layers give one raw score C(x); other
patch sizes work when they are multiples of 32. U-Net: one raw score per pixel. The relativistic average loss in
`trainer.py` turns either into D_Ra (for the U-Net, each pixel's score against the mean of the other kind's).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


class UNetDiscriminator(nn.Module):
    """Real-ESRGAN's discriminator for real-world training: a U-Net with spectral normalisation that scores every
    pixel (N×1×P×P), so it judges local texture, where a whole-patch score cannot say which part looks fake.

    Three stride-2 convs down, three bilinear ×2 + conv stages up with skip connections added, two more convs and a
    one-channel head. Spectral normalisation (not on the first and last convs) keeps the deeper, per-pixel critic
    stable against the strong degradations. Patch sides must be multiples of 8."""

    def __init__(self, num_feat: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        from torch.nn.utils.parametrizations import spectral_norm

        def sn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, 1, bias=False))

        f = num_feat
        self.conv0 = nn.Conv2d(in_channels, f, 3, 1, 1)
        self.down = nn.ModuleList([sn(f, 2 * f, 4, 2), sn(2 * f, 4 * f, 4, 2), sn(4 * f, 8 * f, 4, 2)])
        self.up = nn.ModuleList([sn(8 * f, 4 * f, 3, 1), sn(4 * f, 2 * f, 3, 1), sn(2 * f, f, 3, 1)])
        self.extra = nn.ModuleList([sn(f, f, 3, 1), sn(f, f, 3, 1)])
        self.head = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×P×P in [0, 1] → N×1×P×P raw scores."""
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"the U-Net discriminator needs sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        skips = [F.leaky_relu(self.conv0(x), 0.2)]
        for conv in self.down:
            skips.append(F.leaky_relu(conv(skips[-1]), 0.2))
        h = skips.pop()
        for conv in self.up:
            h = F.leaky_relu(conv(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)), 0.2)
            h = h + skips.pop()
        for conv in self.extra:
            h = F.leaky_relu(conv(h), 0.2)
        return self.head(h)
