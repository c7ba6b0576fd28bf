"""An RRDBNet reference written for the tests from the papers' descriptions: random weights generated straight into
each key layout (ESRGAN's oldest `model.N`, the ESRGAN repository's `RRDB_trunk`, BasicSR's `body`), and a forward
pass in plain F.conv2d / F.interpolate / leaky_relu reading those layouts' own key names. Nothing here uses
esrgan's RRDBNet or its key mappings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from esrgan_cli.model.arch import RRDBConfig

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Variant:
    name: str
    in_ch: int = 3
    out_ch: int = 3
    nf: int = 8
    nb: int = 1
    gc: int = 4
    stages: int = 2  # nearest-neighbour x2 upsampling stages
    unshuffle: int = 1
    plus: bool = False

    @property
    def scale(self) -> int:
        return 2**self.stages // self.unshuffle

    def expected(self) -> RRDBConfig:
        return RRDBConfig(self.in_ch, self.out_ch, self.nf, self.nb, self.gc, self.scale, self.unshuffle, self.plus)


# --- the three layouts, each a naming of the same roles -------------------------------------------------------

@dataclass(frozen=True)
class Names:
    first: str
    block: Callable[[int, int, int], str]  # (block n, dense block k in 1..3, conv j in 1..5)
    plus: Callable[[int, int], str]  # ESRGAN+'s 1x1 conv of block n, dense block k
    trunk: str
    up: Callable[[int], str]  # upsampling conv i in 1..stages
    hr: str
    last: str


def names(layout: str, v: Variant) -> Names:
    if layout == "basicsr":
        return Names("conv_first", lambda n, k, j: f"body.{n}.rdb{k}.conv{j}", lambda n, k: f"body.{n}.rdb{k}.conv1x1",
                     "conv_body", lambda i: f"conv_up{i}", "conv_hr", "conv_last")
    if layout == "esrgan-repo":
        return Names("conv_first", lambda n, k, j: f"RRDB_trunk.{n}.RDB{k}.conv{j}",
                     lambda n, k: f"RRDB_trunk.{n}.RDB{k}.conv1x1", "trunk_conv", lambda i: f"upconv{i}", "HRconv",
                     "conv_last")
    if layout == "oldest":
        # The old arch is one flat nn.Sequential: conv, shortcut(blocks + conv), then per stage (upsample, conv,
        # lrelu), HR conv, lrelu, last conv. Convs inside dense blocks are Sequential(conv, lrelu): hence `.0`.
        s = v.stages
        return Names("model.0", lambda n, k, j: f"model.1.sub.{n}.RDB{k}.conv{j}.0",
                     lambda n, k: f"model.1.sub.{n}.RDB{k}.conv1x1", f"model.1.sub.{v.nb}", lambda i: f"model.{3 * i}",
                     f"model.{3 * s + 2}", f"model.{3 * s + 4}")
    raise ValueError(layout)


LAYOUTS = ("basicsr", "esrgan-repo", "oldest")


def random_state_dict(v: Variant, layout: str, seed: int = 0) -> StateDict:
    """Random weights for `v` under `layout`'s key names; the same seed gives the same tensors in every layout."""
    gen = torch.Generator().manual_seed(seed)
    nm = names(layout, v)
    sd: StateDict = {}

    def conv(name: str, cin: int, cout: int, k: int = 3, bias: bool = True) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
        if bias:
            sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.05

    conv(nm.first, v.in_ch * v.unshuffle**2, v.nf)
    for n in range(v.nb):
        for k in (1, 2, 3):
            if v.plus:
                conv(nm.plus(n, k), v.nf, v.gc, k=1, bias=False)
            for j in range(1, 5):
                conv(nm.block(n, k, j), v.nf + (j - 1) * v.gc, v.gc)
            conv(nm.block(n, k, 5), v.nf + 4 * v.gc, v.nf)
    conv(nm.trunk, v.nf, v.nf)
    for i in range(1, v.stages + 1):
        conv(nm.up(i), v.nf, v.nf)
    conv(nm.hr, v.nf, v.nf)
    conv(nm.last, v.nf, v.out_ch)
    return sd


# --- the reference forward ------------------------------------------------------------------------------------

def _unshuffle(x: torch.Tensor, u: int) -> torch.Tensor:
    n, c, h, w = x.shape
    # Channel c·u² + i·u + j holds sub-pixel (i, j) of input channel c: PyTorch's and BasicSR's order.
    return x.reshape(n, c, h // u, u, w // u, u).permute(0, 1, 3, 5, 2, 4).reshape(n, c * u * u, h // u, w // u)


def reference_forward(sd: StateDict, v: Variant, layout: str, x: torch.Tensor) -> torch.Tensor:
    nm = names(layout, v)

    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        weight = sd[f"{name}.weight"]
        return F.conv2d(t, weight, sd.get(f"{name}.bias"), padding=weight.shape[-1] // 2)

    def lrelu(t: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(t, 0.2)

    def dense_block(n: int, k: int, t: torch.Tensor) -> torch.Tensor:
        feats = [t]
        for j in range(1, 5):
            out = lrelu(conv(nm.block(n, k, j), torch.cat(feats, 1)))
            if v.plus and j == 2:
                out = out + conv(nm.plus(n, k), t)  # ESRGAN+: 1x1 conv of the block input joins after conv2
            if v.plus and j == 4:
                out = out + feats[2]  # ... and conv2's (augmented) output joins after conv4
            feats.append(out)
        return conv(nm.block(n, k, 5), torch.cat(feats, 1)) * 0.2 + t

    if v.unshuffle > 1:
        x = _unshuffle(x, v.unshuffle)
    fea = conv(nm.first, x)
    t = fea
    for n in range(v.nb):
        t = dense_block(n, 3, dense_block(n, 2, dense_block(n, 1, t))) * 0.2 + t
    fea = fea + conv(nm.trunk, t)
    for i in range(1, v.stages + 1):
        fea = lrelu(conv(nm.up(i), F.interpolate(fea, scale_factor=2, mode="nearest")))
    return conv(nm.last, lrelu(conv(nm.hr, fea)))
