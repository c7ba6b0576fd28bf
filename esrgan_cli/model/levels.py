"""True levels: a model's output for flat black and flat white, and a gain and offset that put them back at 0 and 1.

A network trained with a GAN or on few dark images can lift black (compact-x4 turned 0 into 3/255) or dim white,
which swamps the shadows of 16-bit scans. The output's last layer is a convolution, so a per-channel gain `a` and
offset `d` fold into it exactly: a·(W∗h + b) + d = (a·W)∗h + (a·b + d). The model keeps its architecture and cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from esrgan_cli.errors import WeightsError
from esrgan_cli.model.weights import LoadedWeights, build_model

# Flat patches this large put their centre beyond the reach of the model's zero padding (measured: the centre of a
# 32-pixel patch already matches a 160-pixel one within 1e-6 for both bundled compact models).
_PATCH = 64
# A model whose white comes out less than this far above its black is not an upscaler a gain can mend.
_MIN_CONTRAST = 0.5


@dataclass(frozen=True)
class Levels:
    """Per output channel: what flat black and flat white inputs come out as, in [0, 1] units."""

    black: tuple[float, ...]
    white: tuple[float, ...]

    def worst(self) -> float:
        """The largest error of the two, in [0, 1] units."""
        return max(max(abs(b) for b in self.black), max(abs(w - 1) for w in self.white))


@torch.no_grad()
def measure_levels(weights: LoadedWeights) -> Levels:
    """The unclamped fp32 output at the centre of flat black and flat white patches."""
    model = build_model(weights).float()
    flats = torch.stack([torch.full((weights.config.in_channels, _PATCH, _PATCH), v) for v in (0.0, 1.0)])
    out = model(flats)
    centre = out.shape[-1] // 2
    values = out[:, :, centre - 2: centre + 2, centre - 2: centre + 2].mean(dim=(2, 3)).double()
    return Levels(black=tuple(values[0].tolist()), white=tuple(values[1].tolist()))


def true_levels(weights: LoadedWeights, levels: Levels | None = None) -> LoadedWeights:
    """`weights` with a gain and offset folded into `conv_last` so flat black and white come out as themselves;
    `levels` is `measure_levels(weights)`, measured here when not given."""
    levels = levels or measure_levels(weights)
    black = torch.tensor(levels.black, dtype=torch.float64)
    span = torch.tensor(levels.white, dtype=torch.float64) - black
    if bool((span < _MIN_CONTRAST).any()):
        raise WeightsError(f"{weights.path}: white comes out only {float(span.min()):.3f} above black; "
                           "its levels cannot be corrected by a gain")
    gain = 1.0 / span
    sd = dict(weights.state_dict)
    w, b = sd["conv_last.weight"], sd["conv_last.bias"]
    sd["conv_last.weight"] = (w.double() * gain[:, None, None, None]).to(w.dtype)
    sd["conv_last.bias"] = ((b.double() - black) * gain).to(b.dtype)
    return replace(weights, state_dict=sd)
