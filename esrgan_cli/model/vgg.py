"""The perceptual loss's feature network: VGG19 up to one conv layer, taken before its ReLU (ESRGAN §3.3).

The network is built here; weights come from a file (torchvision/timm key names, `features.N.*` or `N.*`) or from
the Hub. Two input conventions exist in the wild and a mismatch silently ruins the loss, so it is explicit:
`imagenet-rgb` (torchvision/timm: RGB in 0..1, ImageNet mean/std) and `caffe-bgr` (Caffe/Keras: BGR in 0..255,
mean subtracted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from esrgan_cli.errors import WeightsError
from esrgan_cli.model.hub import HubFile

# torchvision's vgg19().features: "M" is a 2×2 max-pool.
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
Convention = Literal["imagenet-rgb", "caffe-bgr"]
CONVENTIONS: tuple[Convention, ...] = get_args(Convention)
VGGLayer = Literal[
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3", "conv5_4",
]

# timm's copy of the torchvision ImageNet weights (BSD-3-Clause), pinned to the commit that added them.
VGG19_HUB = HubFile("timm/vgg19.tv_in1k", "model.safetensors", "128d4708565b3a414bcbb9bbad440b2fe37b9f18")


def _layer_indices() -> dict[str, int]:
    """conv1_1 → 0, conv1_2 → 2, ..., conv5_4 → 34: names to indices in `features`."""
    names: dict[str, int] = {}
    block, conv, index = 1, 1, 0
    for item in _VGG19:
        if item == "M":
            block, conv = block + 1, 1
            index += 1
        else:
            names[f"conv{block}_{conv}"] = index
            conv += 1
            index += 2  # the conv and its ReLU
    return names


LAYERS = _layer_indices()


@dataclass(frozen=True)
class PerceptualConfig:
    layer: VGGLayer = "conv5_4"
    convention: Convention = "imagenet-rgb"

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"unknown VGG19 layer {self.layer!r} (use one of {', '.join(LAYERS)})")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown input convention {self.convention!r} (use one of {', '.join(CONVENTIONS)})")


class VGGFeatures(nn.Module):
    """Frozen VGG19 features up to `config.layer` (its output before the ReLU), on RGB images in [0, 1]."""

    mean: torch.Tensor  # buffers, declared so that the type checker knows them as tensors
    std: torch.Tensor

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__()
        self.config = config
        last = LAYERS[config.layer]
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG19:
            if len(layers) > last:
                break
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, 1, 1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers[: last + 1])
        if config.convention == "imagenet-rgb":
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        else:  # BGR 0..255 minus the Caffe means; expressed on RGB input as one affine map per channel
            mean, std = [123.68 / 255, 116.779 / 255, 103.939 / 255], [1 / 255] * 3
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.config.convention == "caffe-bgr":
            x = x.flip(1)
        return self.features(x)

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # a fixed feature extractor: never in training mode


def load_vgg_weights(path: Path, layer: VGGLayer) -> tuple[dict[str, torch.Tensor], Convention | None]:
    """The `features` weights needed up to `layer` (keys `features.N.*` in the result) and the input convention
    the file's metadata declares, if any."""
    path = Path(path)
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                raw = {k: f.get_tensor(k) for k in f.keys()}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            raw = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    except Exception as e:  # noqa: BLE001 - any reader failure is the same user error: not a weights file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: cannot read VGG weights ({first[:160]})") from None
    found: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        m = re.fullmatch(r"(?:features\.)?(\d+)\.(weight|bias)", key)
        if m and isinstance(value, torch.Tensor):
            found[f"features.{m.group(1)}.{m.group(2)}"] = value.float()
    needed = [i for i in LAYERS.values() if i <= LAYERS[layer]]
    missing = [i for i in needed if f"features.{i}.weight" not in found]
    if missing:
        have = [name for name, i in LAYERS.items() if f"features.{i}.weight" in found]
        span = f"has {have[0]}..{have[-1]} only" if have else "has no VGG19 `features` weights"
        raise WeightsError(f"{path}: {span}; {layer} needs more (choose an earlier --perceptual-layer)")
    text = " ".join(metadata.values()).lower()
    convention: Convention | None = "caffe-bgr" if ("caffe" in text or "bgr" in text) else None
    return {k: v for k, v in found.items() if int(k.split(".")[1]) <= LAYERS[layer]}, convention


def build_vgg(state: dict[str, torch.Tensor], config: PerceptualConfig) -> VGGFeatures:
    net = VGGFeatures(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"VGG weights do not fit VGG19: {str(e).splitlines()[0][:200]}") from None
    return net


def perceptual_loss(net: VGGFeatures, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 distance of the features (the HR side needs no gradient)."""
    with torch.no_grad():
        target = net(hr)
    return F.l1_loss(net(sr), target)
