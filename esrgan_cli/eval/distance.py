"""A perceptual distance for `esrgan eval`: LPIPS's baseline without learned weights (Zhang et al., CVPR 2018).

Both images go through a fixed ImageNet VGG19, the perceptual loss's network, read by the same loader
(`training/perceptual.py`). At each chosen layer, taken after its ReLU, every position's feature vector is scaled
to unit length over the channels; the layer's term is the squared difference of the two unit vectors, summed over
channels and averaged over positions; the distance is the sum of the layers' terms. That is the reference
implementation's `lpips=False` path (its equation 1 with all channel weights 1). 0 means identical features; lower
is better. LPIPS proper weights each channel with learned weights and uses VGG16/AlexNet, so these values are on
another scale than published LPIPS figures: they rank models against each other, measured with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from esrgan_cli.errors import ModelNotFoundError
from esrgan_cli.model.vgg import (
    LAYERS,
    VGG19_HUB,
    Convention,
    PerceptualConfig,
    VGGFeatures,
    VGGLayer,
    build_vgg,
    load_vgg_weights,
)

# LPIPS takes the last ReLU of each VGG block. The deepest the partial ImageNet VGG19 we can get offline reaches is
# block 3 (conv1_1..conv3_4), so the default stops there for every weights file, keeping results comparable
# between a full and a partial file of the same weights.
DEFAULT_LAYERS: tuple[VGGLayer, ...] = ("conv1_2", "conv2_2", "conv3_4")
LPIPS_LAYERS: tuple[VGGLayer, ...] = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")
InputConvention = Literal["auto", "imagenet-rgb", "caffe-bgr"]  # auto: what the weights file declares
EPS = 1e-10  # as the reference implementation: added to the norm, so an all-zero feature vector stays zero


def relu_name(layer: VGGLayer) -> str:
    """conv3_4 → relu3_4: the layers are read after their ReLU."""
    return "relu" + layer.removeprefix("conv")


@dataclass(frozen=True)
class DistanceConfig:
    layers: tuple[VGGLayer, ...] = field(default=DEFAULT_LAYERS)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("the perceptual distance needs at least one VGG19 layer")
        unknown = [name for name in self.layers if name not in LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG19 layer {unknown[0]!r} (use one of {', '.join(LAYERS)})")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError("each VGG19 layer may be named once")
        object.__setattr__(self, "layers", tuple(sorted(self.layers, key=LAYERS.__getitem__)))

    @property
    def deepest(self) -> VGGLayer:
        return self.layers[-1]


class UnitFeatures:
    """A VGG19's features at `layers` (after their ReLU), each position's vector scaled to unit length: what the
    eval's distance and the trainer's distance loss (`--perceptual-loss distance`) both compare. Differentiable."""

    def __init__(self, net: VGGFeatures, layers: tuple[VGGLayer, ...]) -> None:
        deepest = max(layers, key=LAYERS.__getitem__)
        if LAYERS[net.config.layer] < LAYERS[deepest]:
            raise ValueError(f"the network ends at {net.config.layer}; {deepest} is deeper")
        self.net = net
        # The network's own forward applies its input convention (imagenet-rgb or caffe-bgr), so features are read
        # from it by hooks on the ReLUs rather than by re-running its layers here with a copy of that logic.
        self._taken: list[torch.Tensor] = []
        last = LAYERS[net.config.layer]
        for name in layers:
            if LAYERS[name] < last:  # the network's last conv has no ReLU after it: see __call__
                net.features[LAYERS[name] + 1].register_forward_hook(self._take)
        self._last_is_layer = net.config.layer in layers

    def _take(self, module: Any, inputs: Any, output: torch.Tensor) -> None:
        # No copy needed: the only in-place layers are the ReLUs, and they work on conv outputs, never on these.
        self._taken.append(output)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """N×3×H×W RGB in 0..1 → one N×C×h×w tensor per layer, unit length over C at every position."""
        self._taken = []
        out = self.net(x)
        feats = self._taken + ([F.relu(out)] if self._last_is_layer else [])
        self._taken = []
        # Where a position's features are all 0, √(Σf²)'s gradient is not finite, but the ReLU before it passes none.
        return [f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS) for f in feats]


def unit_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """The distance of two images' unit features: per layer, the squared difference summed over channels and
    averaged over positions (and over the batch), summed over layers."""
    return sum((fa - fb).pow(2).sum(dim=1).mean() for fa, fb in zip(a, b, strict=True))  # type: ignore[return-value]


def distance_layers(deepest: VGGLayer) -> tuple[VGGLayer, ...]:
    """LPIPS's layers (the last of each VGG block) up to `deepest`, and `deepest` itself."""
    chosen = [name for name in LPIPS_LAYERS if LAYERS[name] <= LAYERS[deepest]]
    return tuple(chosen if deepest in chosen else [*chosen, deepest])


class PerceptualDistance:
    """d(a, b) for two same-size RGB images (H×W×3, uint8 or float in [0, 1]); deterministic on the CPU."""

    def __init__(self, net: VGGFeatures, config: DistanceConfig | None = None, source: str = "") -> None:
        self.config = config or DistanceConfig()
        self.net = net
        self.source = source
        self._device = next(net.parameters()).device
        self._features = UnitFeatures(net, self.config.layers)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        if np.shape(a) != np.shape(b):
            raise ValueError(f"images differ in size: {np.shape(a)} and {np.shape(b)}")
        # One image at a time, so that equal images give bit-equal features (0 exactly) and d(a, b) = d(b, a).
        # The layers' terms are summed in Python floats (float64), as the figures in the model cards were.
        with torch.inference_mode():
            fa = self._features(_as_tensor(a).to(self._device))
            fb = self._features(_as_tensor(b).to(self._device))
            return sum(float(unit_distance([x], [y])) for x, y in zip(fa, fb, strict=True))

    def describe(self) -> dict[str, object]:
        """What the figures were computed with, for reports."""
        return {"weights": self.source, "input": self.net.config.convention,
                "layers": [relu_name(name) for name in self.config.layers]}


def _as_tensor(rgb: np.ndarray) -> torch.Tensor:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {a.shape}")
    x = a.astype(np.float32) / 255 if a.dtype == np.uint8 else a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).unsqueeze(0)


def load_distance(weights: str | Path, convention: InputConvention = "auto", device: str | torch.device = "cpu",
                  config: DistanceConfig | None = None) -> PerceptualDistance:
    """The distance with VGG19 weights from a file, or from the Hub (`"hub"`: the trainer's default, downloaded
    once into the Hugging Face cache). `convention`: auto (what the file declares, else imagenet-rgb),
    imagenet-rgb or caffe-bgr, as the trainer's --perceptual-input."""
    config = config or DistanceConfig()
    if str(weights) == "hub":
        from esrgan_cli.model.hub import fetch

        path = fetch(VGG19_HUB, "the VGG19 weights for the perceptual distance",
                     offline_hint="pass --perceptual-weights PATH (a VGG19 file), or none")
        source = f"hf:{VGG19_HUB.repo}/{VGG19_HUB.filename}@{VGG19_HUB.revision}"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: no such VGG19 weights file")
        source = str(path)
    state, declared = load_vgg_weights(path, config.deepest)
    chosen: Convention = (declared or "imagenet-rgb") if convention == "auto" else convention
    net = build_vgg(state, PerceptualConfig(config.deepest, chosen))
    return PerceptualDistance(net.to(device), config, source)


def hub_weights_cached() -> bool:
    """Whether the trainer's default VGG19 is already in the Hugging Face cache (usable without a download)."""
    from esrgan_cli.model.registry import is_cached

    return is_cached(VGG19_HUB)
