"""RRDBNet, the ESRGAN generator (Wang et al. 2018), with BasicSR's parameter names.

The module does no I/O: it builds a network from an `RRDBConfig`. Loading, key
layouts and architecture detection live in `checkpoint.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

# Re-exported: RRDBConfig lives in the torch-free config module; code that builds networks finds it here too.
from esrgan_cli.model.config import MAX_UPSAMPLE_STAGES as MAX_UPSAMPLE_STAGES
from esrgan_cli.model.config import RRDBConfig as RRDBConfig


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow: int, plus: bool = False) -> None:
        super().__init__()
        # ESRGAN+ only: no bias, as in its reference implementation.
        self.conv1x1 = nn.Conv2d(num_feat, num_grow, 1, bias=False) if plus else None
        self.conv1 = nn.Conv2d(num_feat, num_grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow, num_grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow, num_grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow, num_grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        if self.conv1x1 is not None:
            x2 = x2 + self.conv1x1(x)
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        if self.conv1x1 is not None:
            x4 = x4 + x2
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        # One fused pass instead of a multiply and an add: about 5 % of the whole model's time on CPU.
        return torch.add(x, x5, alpha=0.2)


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow: int, plus: bool = False) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow, plus)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow, plus)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow, plus)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.rdb3(self.rdb2(self.rdb1(x))), alpha=0.2)


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.conv_first = nn.Conv2d(c.in_channels * c.unshuffle**2, c.num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(c.num_feat, c.num_grow, c.plus) for _ in range(c.num_block)))
        self.conv_body = nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1)
        for i in range(1, c.upsample_stages + 1):
            self.add_module(f"conv_up{i}", nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(c.num_feat, c.out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×C×H×W in [0, 1], H and W multiples of `config.unshuffle`."""
        return self.tail(self.trunk(x))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The low-resolution part: N×C×H×W → N×num_feat×(H/u)×(W/u) features. Nearly all the compute."""
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        return feat + self.conv_body(self.body(feat))

    def tail(self, feat: torch.Tensor) -> torch.Tensor:
        """The upsampling part: features → N×out×(H·s)×(W·s). Nearly all the memory, and a receptive field of
        only `TAIL_REACH` feature pixels, so it can run on small tiles with exact results."""
        for i in range(1, self.config.upsample_stages + 1):
            up = getattr(self, f"conv_up{i}")
            feat = self.lrelu(up(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# Feature pixels of context the tail needs for an exact result: one 3x3 conv per upsampling stage, then conv_hr and
# conv_last at full resolution, reach under 2 feature pixels for x4 (a sum of halving steps: it stays under 2 for x8
# and x16 too); 4 leaves room to spare.
TAIL_REACH = 4


def init_weights(model: RRDBNet, scale: float = 0.1, seed: int | None = None) -> RRDBNet:
    """The paper's initialisation: Kaiming-normal weights, zero biases, and the convs inside the residual dense
    blocks scaled by `scale`. As in BasicSR, only those are scaled: scaling the head and the upsampling path too
    leaves the output near zero and stalls early training."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    scaled = {id(m) for rdb in model.modules() if isinstance(rdb, ResidualDenseBlock) for m in rdb.modules()}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                std = math.sqrt(2.0 / fan_in) * (scale if id(m) in scaled else 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def init_interpolating(model: RRDBNet, scale: float = 0.1, seed: int | None = None) -> RRDBNet:
    """`init_weights`, then the first `out_channels` feature channels are made to carry the image: the untrained
    network is a sharpened bilinear upscaler, about as good as bicubic, and training only has to learn the detail.

    From the paper's random start a small network needs thousands of steps before it even matches bicubic: it must
    first learn to pass the image through every convolution. Here conv_first copies and sharpens the image (the mean
    of the pixel-unshuffled sub-pixels when the model unshuffles), conv_body adds nothing to those channels yet, each
    upsampling conv turns nearest-neighbour doubling into bilinear doubling with a [1, 2, 1]/4 kernel, and conv_hr
    and conv_last pass the channels through. Images are in [0, 1], so the LeakyReLUs are the identity on them except
    where sharpening overshoots below zero. Every other weight keeps the paper's initialisation.
    """
    init_weights(model, scale, seed)
    c = model.config
    carried = c.out_channels
    if c.in_channels != c.out_channels or c.num_feat < carried:
        return model  # nothing sensible to carry: keep the paper's start
    u2 = c.unshuffle**2
    ramp = torch.tensor([1.0, 2.0, 1.0]) / 4
    smooth = torch.outer(ramp, ramp)
    copy = torch.zeros(3, 3)
    copy[1, 1] = 1.0
    # Two bilinear doublings blur more than bicubic; sharpening the input once (2x minus its blur) more than makes
    # up for it: on Set5 x4 the untrained network scores 28.5 dB, bicubic 28.4, without it 27.1.
    sharpen = 2 * copy - smooth
    with torch.no_grad():
        for ch in range(carried):
            model.conv_first.weight[ch].zero_()
            # pixel_unshuffle puts the u*u sub-pixels of channel ch at ch*u2 .. ch*u2+u2-1
            model.conv_first.weight[ch, ch * u2:(ch + 1) * u2] = sharpen / u2
        model.conv_body.weight[:carried].zero_()
        convs = [getattr(model, f"conv_up{i}") for i in range(1, c.upsample_stages + 1)]
        for conv, kernel in [*((up, smooth) for up in convs), (model.conv_hr, copy), (model.conv_last, copy)]:
            conv.weight[:carried].zero_()
            for ch in range(carried):
                conv.weight[ch, ch] = kernel
    return model


# `--weight-init` names → initialisers, each called as init(model, scale, seed).
INIT_SCHEMES: dict[str, Callable[[RRDBNet, float, int | None], RRDBNet]] = {
    "interp": init_interpolating, "paper": init_weights,
}
