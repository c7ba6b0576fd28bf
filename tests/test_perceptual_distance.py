"""The perceptual distance of `esrgan eval`: LPIPS's unlearned baseline on VGG19, checked against a plain
re-implementation, and for the properties a distance must have."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import errors as hf_errors
from PIL import Image, ImageFilter
from safetensors.torch import save_file
from torch.nn import functional as F

from esrgan_cli.errors import ModelNotFoundError, WeightsError
from esrgan_cli.eval.distance import (
    DistanceConfig,
    PerceptualDistance,
    UnitFeatures,
    distance_layers,
    load_distance,
    unit_distance,
)
from esrgan_cli.model.vgg import PerceptualConfig, VGGFeatures

from conftest import random_image

# VGG19 up to conv3_4: (in, out) channels per conv, "M" a 2×2 max-pool. Written out here, apart from the package.
PLAN = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), (256, 256)]
TAKEN = {1, 4, 9}  # positions in PLAN of conv1_2, conv2_2 and conv3_4, read after their ReLU


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random VGG19 (conv1_1..conv3_4) with torchvision key names and no metadata (so imagenet-rgb)."""
    torch.manual_seed(0)
    net = VGGFeatures(PerceptualConfig("conv3_4"))
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def uint8_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (random_image(h, w, seed) * 255).round().astype(np.uint8)


def reference_distance(state: dict[str, torch.Tensor], a: np.ndarray, b: np.ndarray, convention: str) -> float:
    """The definition, written plainly in float64: the same VGG features of both images after each chosen ReLU,
    each position's channel vector divided by its length (+1e-10), squared differences summed over channels,
    averaged over positions, summed over the layers."""
    def features(rgb: np.ndarray) -> list[torch.Tensor]:
        x = torch.tensor(rgb, dtype=torch.float64).permute(2, 0, 1)[None] / 255
        if convention == "imagenet-rgb":
            mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
            std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)
            x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        else:  # Caffe: BGR, 0..255, the per-channel ImageNet mean subtracted
            bgr_mean = torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64)
            x = x.flip(1) * 255 - bgr_mean.view(1, 3, 1, 1)
        taken, index = [], 0
        for position, step in enumerate(PLAN):
            if step == "M":
                x = F.max_pool2d(x, 2)
                index += 1
                continue
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"].double(), state[f"features.{index}.bias"].double(),
                                padding=1))
            index += 2
            if position in TAKEN:
                taken.append(x)
        return taken

    total = 0.0
    for fa, fb in zip(features(a), features(b), strict=True):
        ua = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        ub = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        total += float((ua - ub).pow(2).sum(dim=1).mean())
    return total


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("convention", ["imagenet-rgb", "caffe-bgr"])
def test_matches_a_plain_implementation_of_the_definition(vgg_file: Path, convention: str) -> None:
    distance = load_distance(vgg_file, convention)  # type: ignore[arg-type]
    a, b = uint8_image(36, 44, seed=1), uint8_image(36, 44, seed=2)
    expected = reference_distance(load_state(vgg_file), a, b, convention)
    assert expected > 0
    assert distance(a, b) == pytest.approx(expected, rel=1e-4)
    assert distance.describe()["layers"] == ["relu1_2", "relu2_2", "relu3_4"]
    assert distance.describe()["input"] == convention


def test_identical_images_are_at_zero_and_the_distance_is_symmetric(vgg_file: Path) -> None:
    distance = load_distance(vgg_file)
    a, b = uint8_image(32, 32, seed=3), uint8_image(32, 32, seed=4)
    assert distance(a, a.copy()) == 0.0
    assert distance(a, b) == distance(b, a) > 0
    assert distance(a, b) == distance(a, b)  # deterministic


def noisy(image: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(7)  # the same noise pattern, scaled
    return np.clip(image + sigma * rng.standard_normal(image.shape), 0, 255).round().astype(np.uint8)


def blurred(image: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def assert_grows(distance: PerceptualDistance, image: np.ndarray) -> None:
    by_noise = [distance(image, noisy(image, s)) for s in (2, 5, 10, 20, 40)]
    by_blur = [distance(image, blurred(image, r)) for r in (0.5, 1, 2, 4)]
    assert np.all(np.diff(by_noise) > 0), by_noise
    assert np.all(np.diff(by_blur) > 0), by_blur
    assert by_noise[0] > 0 and by_blur[0] > 0


def test_more_noise_or_blur_is_farther(vgg_file: Path) -> None:
    assert_grows(load_distance(vgg_file), uint8_image(48, 48, seed=5))


def test_more_noise_or_blur_is_farther_with_the_imagenet_vgg(shared: Path) -> None:
    distance = load_distance(shared / "vgg" / "vgg19-imagenet-conv1_1-conv3_4.caffe-bgr.safetensors")
    assert distance.net.config.convention == "caffe-bgr"  # declared by the file's metadata
    photo = np.asarray(Image.open(shared / "testsets" / "Set5" / "HR" / "bird.png").convert("RGB"))[:64, :64]
    assert_grows(distance, photo)


def test_layers_are_checked_and_ordered(vgg_file: Path) -> None:
    assert DistanceConfig(("conv3_4", "conv1_2")).layers == ("conv1_2", "conv3_4")
    for bad in ((), ("conv9_9",), ("conv1_2", "conv1_2")):
        with pytest.raises(ValueError):
            DistanceConfig(bad)  # type: ignore[arg-type]
    shallow = load_distance(vgg_file, config=DistanceConfig(("conv1_1",)))
    assert shallow.describe()["layers"] == ["relu1_1"]
    with pytest.raises(WeightsError, match="conv4_4 needs more"):
        load_distance(vgg_file, config=DistanceConfig(("conv4_4",)))


def test_sizes_must_match(vgg_file: Path) -> None:
    with pytest.raises(ValueError, match="differ in size"):
        load_distance(vgg_file)(uint8_image(32, 32), uint8_image(32, 36))


def test_unavailable_weights_are_a_model_not_found_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="no such VGG19 weights file"):
        load_distance(tmp_path / "missing.safetensors")
    monkeypatch.setenv("ESRGAN_CACHE", str(tmp_path / "cache"))

    def offline(repo_id: str, filename: str, **kw: object) -> str:
        raise hf_errors.LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelNotFoundError, match="timm/vgg19.tv_in1k"):
        load_distance("hub")


def test_the_training_loss_is_the_distance_batched_and_differentiable(vgg_file: Path) -> None:
    """--perceptual-loss distance: on a batch, the mean of the per-image distances; its gradient is finite, also
    for a flat black image (positions whose features are all zero)."""
    net = VGGFeatures(PerceptualConfig("conv3_4"))
    net.load_state_dict(load_state(vgg_file))
    features = UnitFeatures(net, distance_layers("conv3_4"))
    pairs = [(uint8_image(32, 40, seed=10 + i), uint8_image(32, 40, seed=20 + i)) for i in range(3)]
    batch_a = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a, _ in pairs])
    batch_b = torch.stack([torch.from_numpy(b).permute(2, 0, 1).float() / 255 for _, b in pairs])
    expected = np.mean([reference_distance(load_state(vgg_file), a, b, "imagenet-rgb") for a, b in pairs])
    assert float(unit_distance(features(batch_a), features(batch_b))) == pytest.approx(expected, rel=1e-4)

    sr = batch_a.clone().requires_grad_(True)
    unit_distance(features(sr), features(batch_b)).backward()
    assert sr.grad is not None and bool(torch.isfinite(sr.grad).all()) and float(sr.grad.abs().sum()) > 0
    with torch.no_grad():
        net.features[2].bias.fill_(-1e3)  # relu1_2 all zero: the normalisation divides zero vectors
    black = torch.zeros(1, 3, 32, 40, requires_grad=True)
    unit_distance(features(black), features(batch_b[:1])).backward()
    assert black.grad is not None and bool(torch.isfinite(black.grad).all())


def test_distance_layers_are_lpips_layers_up_to_the_deepest() -> None:
    assert distance_layers("conv3_4") == ("conv1_2", "conv2_2", "conv3_4") == DistanceConfig().layers
    assert distance_layers("conv5_4") == ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")
    assert distance_layers("conv2_1") == ("conv1_2", "conv2_1")
