"""Must show 4: every RRDBNet variant that spandrel 0.4.2 reads loads in every layout and file format, is detected
from its shapes, shows the right architecture in `esrgan info --json`, and runs to the output of a reference
forward written here from the papers' descriptions: plain F.conv2d / F.interpolate / leaky_relu on the generated
state dict, under the generated layout's own key names, without esrgan's RRDBNet.

The weights are generated here too, straight into each layout (ESRGAN's oldest `model.N`, the ESRGAN repository's
`RRDB_trunk`, BasicSR's `body`), so the layouts are written down independently of the loader's mappings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from esrgan_cli.arch import RRDBConfig
from esrgan_cli.errors import WeightsError
from esrgan_cli.weights import build_model, describe_weights, load_weights

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
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


VARIANTS = [
    Variant("x4"),
    Variant("x1-unshuffle4", stages=2, unshuffle=4),
    Variant("x2-unshuffle2", stages=2, unshuffle=2),
    Variant("x2-one-stage", stages=1),
    Variant("x1-no-stage", stages=0),
    Variant("x8", nb=2, stages=3),
    Variant("x16", stages=4),
    Variant("esrgan-plus-x4", nb=2, plus=True),
    Variant("esrgan-plus-x16", plus=True, stages=4),
    Variant("esrgan-plus-x1-unshuffle4", plus=True, stages=2, unshuffle=4),
    Variant("gray-x4", in_ch=1, out_ch=1),
    Variant("gray-in-rgb-out-x2", in_ch=1, out_ch=3, stages=1),
    Variant("rgba-x4", in_ch=4, out_ch=4),
    Variant("rgba-x2-unshuffle2", in_ch=4, out_ch=4, stages=2, unshuffle=2),
    Variant("wide-16f-growth8", nf=16, nb=2, gc=8),
]


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


# --- helpers --------------------------------------------------------------------------------------------------

def write(obj: object, path: Path) -> Path:
    if path.suffix == ".safetensors":
        assert isinstance(obj, dict)
        save_file({k: t.contiguous() for k, t in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def info_json(paths: list[Path]) -> list[dict[str, object]]:
    """`esrgan info PATH --json` for each path, as subprocesses run side by side (each costs a torch import, so
    tests run it on a sample of their files and check the rest through `describe_weights`, which it prints)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "esrgan_cli", "info", str(p), "--json"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in paths]
    out = []
    for path, proc in zip(paths, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (path.name, stderr)
        out.append(json.loads(stdout))
    return out


def sample_input(v: Variant, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, v.in_ch, 8, 8, generator=torch.Generator().manual_seed(seed))


def max_error(path: Path, sd: StateDict, v: Variant, layout: str) -> float:
    model = build_model(load_weights(path))
    x = sample_input(v)
    with torch.no_grad():
        got = model(x)
        want = reference_forward(sd, v, layout, x)
    assert got.shape == (1, v.out_ch, 8 * v.scale, 8 * v.scale)
    return float((got - want).abs().max())


def assert_info(info: dict[str, object], v: Variant) -> None:
    config = info["config"]
    assert isinstance(config, dict)
    assert info["scale"] == v.scale
    assert (config["num_block"], config["num_feat"], config["num_grow"]) == (v.nb, v.nf, v.gc)
    assert (config["in_channels"], config["out_channels"], config["unshuffle"]) == (v.in_ch, v.out_ch, v.unshuffle)
    assert config.get("plus", False) == v.plus
    assert info["variant"] == ("ESRGAN+" if v.plus else "ESRGAN")
    assert info["notes"] == []


# --- every variant × layout × format --------------------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(VARIANTS)), ids=[v.name for v in VARIANTS])
def test_variant_loads_in_every_layout_and_format(index: int, tmp_path: Path) -> None:
    v = VARIANTS[index]
    files = []
    for layout in LAYOUTS:
        sd = random_state_dict(v, layout, seed=7)
        for suffix in (".pth", ".safetensors"):
            path = write(sd, tmp_path / f"{v.name}.{layout}{suffix}")
            loaded = load_weights(path)
            assert loaded.config == v.expected(), path.name
            assert loaded.notes == ()
            assert_info(describe_weights(loaded, str(path)), v)
            err = max_error(path, sd, v, layout)
            assert err <= TOL, (path.name, err)
            files.append(path)
    # The CLI on two of the six files, a .pth and a .safetensors, rotating through the layouts across variants.
    sample = [files[(2 * index) % 6], files[(2 * index + 3) % 6]]
    for info in info_json(sample):
        assert_info(info, v)


def test_reference_forward_agrees_across_layouts() -> None:
    """The reference itself reads each layout's names: the same seed gives the same output in all three."""
    v = Variant("plus", nb=2, plus=True, stages=3)
    x = sample_input(v)
    outs = [reference_forward(random_state_dict(v, layout, 3), v, layout, x) for layout in LAYOUTS]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


# --- wrappers -------------------------------------------------------------------------------------------------

def _prefixed(sd: StateDict, prefix: str) -> StateDict:
    return {prefix + k: t for k, t in sd.items()}


WRAPPERS: dict[str, Callable[[StateDict], object]] = {
    "params_ema-over-params": lambda sd: {"params": {k: t + 1 for k, t in sd.items()}, "params_ema": sd},
    "params-ema": lambda sd: {"params-ema": sd},
    "params-ema-over-params": lambda sd: {"params": {k: t + 1 for k, t in sd.items()}, "params-ema": sd},
    "net": lambda sd: {"net": sd, "iteration": 5},
    "netG-prefix": lambda sd: _prefixed(sd, "netG."),
    "module-prefix-in-state_dict": lambda sd: {"state_dict": _prefixed(sd, "module."), "epoch": 3},
    "single-key": lambda sd: {"generator_weights": sd},
    "nested-single-keys": lambda sd: {"a": {"b": {"c": sd}}},
    "single-key-around-net-with-netG-prefix": lambda sd: {"checkpoint": {"net": _prefixed(sd, "netG.")}},
}
WRAPPED = [Variant("x4"), Variant("esrgan-plus-x16", plus=True, stages=4)]


@pytest.mark.parametrize("v", WRAPPED, ids=lambda v: v.name)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrappers_unwrap_to_the_same_model(v: Variant, layout: str, tmp_path: Path) -> None:
    sd = random_state_dict(v, layout, seed=11)
    for name, wrap in WRAPPERS.items():
        path = write(wrap(sd), tmp_path / f"{name}.pth")
        loaded = load_weights(path)
        assert loaded.config == v.expected(), name
        assert_info(describe_weights(loaded, str(path)), v)
        err = max_error(path, sd, v, layout)
        assert err <= TOL, (name, err)
    (info,) = info_json([tmp_path / "single-key-around-net-with-netG-prefix.pth"])
    assert_info(info, v)


def test_nesting_is_bounded(tmp_path: Path) -> None:
    obj: object = random_state_dict(Variant("x4"), "basicsr")
    for i in range(8):
        obj = {f"level{i}": obj}
    with pytest.raises(WeightsError, match="levels of nesting"):
        load_weights(write(obj, tmp_path / "deep.pth"))


# --- metadata that disagrees with the shapes ------------------------------------------------------------------

META_CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "esrgan-config": (
        {"esrgan.config": json.dumps({"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_block": 23,
                                      "num_grow": 32, "scale": 4, "unshuffle": 1})},
        ["metadata says 64 features; the tensors are 8 features: using the tensors",
         "metadata says 23 blocks; the tensors are 2 blocks: using the tensors",
         "metadata says growth 32; the tensors are growth 4: using the tensors"],
    ),
    "basicsr-loose": (
        {"arch": "RRDBNet", "num_block": "23", "scale": "8"},
        ["metadata says 23 blocks; the tensors are 2 blocks: using the tensors",
         "metadata says x8; the tensors are x4: using the tensors"],
    ),
    "esrgan-plus-claimed": (
        {"esrgan.config": json.dumps({"num_feat": 8, "num_block": 2, "num_grow": 4, "scale": 4, "plus": True})},
        ["metadata says ESRGAN+; the tensors are plain ESRGAN (no ESRGAN+ 1x1 convs): using the tensors"],
    ),
    "unreadable": (
        {"esrgan.config": "{not json"},
        ["metadata's architecture is unreadable"],
    ),
}


@pytest.mark.parametrize("case", META_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_shapes_win_over_disagreeing_metadata_and_info_says_so(case: str, layout: str, tmp_path: Path) -> None:
    v = Variant("x4", nb=2)
    meta, notes = META_CASES[case]
    sd = random_state_dict(v, layout, seed=5)
    path = tmp_path / f"{case}.safetensors"
    save_file(sd, str(path), metadata=meta)
    loaded = load_weights(path)
    assert loaded.config == v.expected()
    assert len(loaded.notes) == len(notes)
    for got, want in zip(loaded.notes, notes, strict=True):
        assert got.startswith(want), got
    assert max_error(path, sd, v, layout) <= TOL
    described = describe_weights(loaded, str(path))
    assert described["notes"] == list(loaded.notes)
    assert loaded.notes[0] in str(described["description"])  # the text output prints the description
    if layout == "oldest":  # the CLI once per case
        (info,) = info_json([path])
        assert info["notes"] == list(loaded.notes)
        assert info["scale"] == 4 and info["config"]["num_block"] == 2  # type: ignore[index]


def test_metadata_that_fits_a_shape_reading_settles_it_without_notes(tmp_path: Path) -> None:
    # 12 input planes are x2 by pixel-unshuffle of RGB or x4 of a 12-channel image; the metadata picks the latter.
    v = Variant("x4-12ch", in_ch=12)
    sd = random_state_dict(v, "basicsr")
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path), metadata={"arch": "RRDBNet", "num_in_ch": "12", "scale": "4", "num_block": "1"})
    loaded = load_weights(path)
    assert loaded.config == v.expected() and loaded.notes == ()
    assert max_error(path, sd, v, "basicsr") <= TOL
    write(sd, tmp_path / "bare.safetensors")  # without metadata: the likeliest reading, as spandrel reads it
    assert load_weights(tmp_path / "bare.safetensors").config == RRDBConfig(3, 3, 8, 1, 4, scale=2, unshuffle=2)


# --- refusals -------------------------------------------------------------------------------------------------

def _one_line_refusal(path: Path, match: str) -> None:
    with pytest.raises(WeightsError, match=match) as e:
        load_weights(path)
    assert "\n" not in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "esrgan_cli", "info", str(path), "--json"], cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_stage_model_said_to_be_x3_is_refused_as_ambiguous(layout: str, tmp_path: Path) -> None:
    # ESRGAN's x3 models upsample once by 3 with exactly the tensors of an x2 model's single stage.
    v = Variant("one-stage", stages=1)
    sd = random_state_dict(v, layout)
    meta_path = tmp_path / "model.safetensors"
    save_file(sd, str(meta_path), metadata={"arch": "RRDBNet", "scale": "3"})
    _one_line_refusal(meta_path, r"ambiguous scale: .* x2 or x3 .* metadata says x3")
    named = write(sd, tmp_path / "3x_Community_Model.pth")
    _one_line_refusal(named, r"ambiguous scale: .* the file name '3x_Community_Model.pth' says x3")
    # The same tensors named or described as x2 (or not at all) load as x2, as spandrel reads them.
    for name in ("2x_Community_Model.pth", "model.pth"):
        assert load_weights(write(sd, tmp_path / name)).config == v.expected()


def test_a_file_claiming_x3_with_two_stages_loads_by_its_shapes_with_a_note(tmp_path: Path) -> None:
    sd = random_state_dict(Variant("x4"), "oldest")
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path), metadata={"arch": "RRDBNet", "scale": "3"})
    loaded = load_weights(path)
    assert loaded.config.scale == 4
    assert loaded.notes == ("metadata says x3; the tensors are x4: using the tensors",)


def test_more_than_four_upsampling_stages_are_refused(tmp_path: Path) -> None:
    sd = random_state_dict(Variant("x32", stages=5), "esrgan-repo")
    _one_line_refusal(write(sd, tmp_path / "x32.pth"), r"5 upsampling stages; esrgan runs up to 4 \(x16\)")


def test_old_pixel_shuffle_upsamplers_are_refused(tmp_path: Path) -> None:
    # Sequential(conv, PixelShuffle, lrelu) puts the upsampling convs at model.2 and model.5.
    v = Variant("x4")
    sd = random_state_dict(v, "oldest")
    moved = {k.replace("model.3.", "model.2.").replace("model.6.", "model.5."): t for k, t in sd.items()}
    _one_line_refusal(write(moved, tmp_path / "ps.pth"), r"pixel-shuffle upsamplers are not supported")


def test_partial_esrgan_plus_is_refused(tmp_path: Path) -> None:
    sd = random_state_dict(Variant("plus", plus=True), "oldest")
    del sd["model.1.sub.0.RDB3.conv1x1.weight"]
    _one_line_refusal(write(sd, tmp_path / "cut.pth"), r"missing 'body.0.rdb3.conv1x1.weight'")


# --- spandrel itself, where it can be imported ------------------------------------------------------------------

def _spandrel_loader() -> object:
    try:
        import spandrel  # type: ignore[import-not-found]
    except Exception as e:  # noqa: BLE001 - spandrel imports torchvision, which may be missing or mismatched
        pytest.skip(f"spandrel not importable: {type(e).__name__}")
    return spandrel.ModelLoader()


# spandrel 0.4.2 builds every ESRGAN with growth 32, so its comparisons use that growth.
SPANDREL_VARIANTS = [
    Variant("x4", gc=32), Variant("x16", gc=32, stages=4), Variant("plus", gc=32, plus=True),
    Variant("x1-unshuffle4", gc=32, unshuffle=4), Variant("rgba-x8", in_ch=4, out_ch=4, gc=32, stages=3),
]


@pytest.mark.parametrize("v", SPANDREL_VARIANTS, ids=lambda v: v.name)
def test_same_output_as_spandrel(v: Variant, tmp_path: Path) -> None:
    loader = _spandrel_loader()
    sd = random_state_dict(v, "oldest")
    path = write(sd, tmp_path / "m.pth")
    theirs = loader.load_from_file(path)  # type: ignore[attr-defined]
    ours = build_model(load_weights(path))
    x = sample_input(v)
    with torch.no_grad():
        assert float((ours(x) - theirs.model.eval()(x)).abs().max()) <= TOL
    assert theirs.scale == v.scale and theirs.input_channels == v.in_ch
