import pytest
import torch

from esrgan_cli.model._layouts import expected_shapes
from esrgan_cli.model.arch import RRDBConfig, RRDBNet, init_interpolating, init_weights

from conftest import tiny_model

CONFIGS = [
    RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=4),
    RRDBConfig(num_feat=16, num_block=2, num_grow=8, scale=2),
    RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=1),
    RRDBConfig(num_feat=8, num_block=2, num_grow=4, scale=8),
    RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=2, unshuffle=1),  # old-style x2: one upsampling stage
    RRDBConfig(in_channels=1, out_channels=1, num_feat=8, num_block=1, num_grow=4, scale=4),
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_output_shape_follows_scale(config: RRDBConfig) -> None:
    model = tiny_model(config)
    x = torch.rand(1, config.in_channels, 8, 12)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, config.out_channels, 8 * config.scale, 12 * config.scale)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_state_dict_keys_are_canonical(config: RRDBConfig) -> None:
    sd = RRDBNet(config).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(config)


def test_paper_model_size_and_cost() -> None:
    config = RRDBConfig()  # 23 blocks, 64 features, growth 32, x4
    params = sum(p.numel() for p in RRDBNet(config).parameters())
    assert params == 16_697_987
    assert config.macs_per_input_pixel() == 17_926_848


@pytest.mark.parametrize("config", [
    RRDBConfig(num_feat=8, num_block=2, num_grow=4, scale=2),
    RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=16),
    RRDBConfig(num_feat=8, num_block=2, num_grow=4, scale=4, plus=True),
], ids=str)
def test_mac_count_matches_conv_arithmetic(config: RRDBConfig) -> None:
    model = RRDBNet(config)
    h = w = 8
    total = 0

    def hook(mod: torch.nn.Conv2d, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_channels * mod.weight[0, 0].numel()

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.rand(1, 3, h, w))
    assert total == config.macs_per_input_pixel() * h * w


@pytest.mark.parametrize("scale,unshuffle", [(3, 0), (4, 3), (32, 1), (16, 2)])
def test_unsupported_scales_are_refused(scale: int, unshuffle: int) -> None:
    with pytest.raises(ValueError):
        RRDBConfig(scale=scale, unshuffle=unshuffle)


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_interpolating_start_passes_the_image_through(scale: int) -> None:
    """Untrained, the network is a sharpened bilinear upscaler: a flat image stays flat (away from the zero-padded
    border), and a smooth ramp comes out as a ramp."""
    model = init_interpolating(RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow=4, scale=scale)), seed=0).eval()
    flat = torch.full((1, 3, 16, 16), 0.5)
    flat[:, 1] = 0.25
    with torch.no_grad():
        out = model(flat)
    m = 3 * scale + 8  # the kernels reach a few pixels in from the border
    torch.testing.assert_close(out[..., m:-m, m:-m], flat.mean((2, 3), keepdim=True).expand_as(out)[..., m:-m, m:-m])
    ramp = torch.linspace(0.2, 0.8, 48).expand(1, 3, 48, 48).contiguous()
    with torch.no_grad():
        out = model(ramp)
    up = out[0, 0, out.shape[2] // 2, m:-m]
    assert torch.all(up[1:] >= up[:-1] - 1e-6)  # monotonic, as the input
    assert float(up[-1] - up[0]) > 0.3


def test_interpolating_start_keeps_the_paper_init_elsewhere() -> None:
    config = RRDBConfig(num_feat=8, num_block=1, num_grow=4)
    paper = init_weights(RRDBNet(config), 0.1, seed=3)
    interp = init_interpolating(RRDBNet(config), 0.1, seed=3)
    carried = config.out_channels
    for (name, a), b in zip(paper.state_dict().items(), interp.state_dict().values(), strict=True):
        if name.startswith("body."):
            assert torch.equal(a, b), name
        elif name.endswith("weight") and not name.startswith("body."):
            assert torch.equal(a[carried:], b[carried:]), name  # only the carrier channels' rows differ
