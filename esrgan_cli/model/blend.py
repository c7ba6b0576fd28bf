"""Network interpolation (ESRGAN §3.4): θ = (1 − α)·θ_A + α·θ_B, tensor by tensor. No I/O."""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from esrgan_cli.errors import WeightsError
from esrgan_cli.model._layouts import StateDict
from esrgan_cli.model.weights import LoadedWeights


def check_compatible(a: LoadedWeights, b: LoadedWeights) -> None:
    """Refuse to blend different networks, naming the first difference.

    Loading already checked every key and shape against each file's architecture,
    so equal architectures mean equal key sets and shapes.
    """
    for f in fields(a.config):
        va, vb = getattr(a.config, f.name), getattr(b.config, f.name)
        if va != vb:
            raise WeightsError(
                f"cannot blend different architectures: {f.name} is {va} in {a.path.name} and {vb} in {b.path.name}"
            )


def blend(a: LoadedWeights, b: LoadedWeights, alpha: float) -> StateDict:
    """(1 − α)·A + α·B in fp64, so the only rounding is the final cast by the caller."""
    check_compatible(a, b)
    return {
        key: ((1 - alpha) * ta.double() + alpha * b.state_dict[key].double()).to(torch.float32)
        for key, ta in a.state_dict.items()
    }


def with_strength(model: LoadedWeights, twin: LoadedWeights, strength: float) -> LoadedWeights:
    """Network interpolation at load time: S·model + (1 − S)·twin on every tensor, in float32, so that S = 1 gives
    the model's tensors and S = 0 the twin's, bit for bit. The precision the model runs in is applied after this."""
    check_compatible(model, twin)
    s = float(strength)
    if not 0.0 <= s <= 1.0:  # also refuses NaN
        raise ValueError(f"strength must be within [0, 1], got {strength!r}")
    state = {key: s * t.to(torch.float32) + (1.0 - s) * twin.state_dict[key].to(torch.float32)
             for key, t in model.state_dict.items()}
    meta = {**model.metadata, "esrgan.strength": repr(s)}
    return replace(model, state_dict=state, metadata=meta)


def parse_alphas(text: str) -> list[float]:
    """`0.6` → [0.6]; `0:1:0.25` → [0, 0.25, 0.5, 0.75, 1]; `0.2,0.8` → [0.2, 0.8]."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step))
            values = [start + i * step for i in range(n + 1)]
            if abs(values[-1] - stop) > 1e-9:
                raise ValueError
            return [round(v, 10) for v in values]
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a number, a list like 0.2,0.8, or a range START:STOP:STEP") from None
