"""State dicts of RRDBNet as found in the wild, brought to BasicSR's canonical keys.

Pure tensor-dictionary work, no file I/O: `canonicalize` unwraps containers
(`params_ema`, `params-ema`, `params`, `state_dict`, `net`, single-key dicts,
`module.`/`netG.` prefixes…), renames the oldest ESRGAN layout (`model.N`) and
the ESRGAN-repository layout (`RRDB_trunk`) to BasicSR's names, and
`detect_config` / `resolve_config` read the architecture from tensor shapes.
ESRGAN+'s extra 1x1 convs are canonically `body.N.rdbK.conv1x1.weight`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from esrgan_cli.errors import WeightsError
from esrgan_cli.model.config import MAX_UPSAMPLE_STAGES, RRDBConfig

StateDict = dict[str, torch.Tensor]

# Checked in this order: BasicSR stores the EMA weights beside the raw ones and
# the EMA ones are the model that was evaluated.
_WRAPPER_KEYS = (
    "params_ema", "params-ema", "params", "state_dict", "model_state_dict",
    "net_g", "netG", "generator", "model", "net",
)
# Containers nest rarely more than two deep; the bound keeps a hostile file from looping us.
_MAX_DEPTH = 4


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap(obj: Any) -> StateDict:
    """Find the tensor dictionary inside a checkpoint container: a known wrapper key, or the only entry of a
    single-key dictionary, repeatedly, at most `_MAX_DEPTH` levels deep."""
    for _ in range(_MAX_DEPTH + 1):
        if _is_state_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None and len(obj) == 1 and isinstance(only := next(iter(obj.values())), Mapping):
            inner = only
        if inner is None:
            # Training checkpoints mix tensors with step counters and optimizer
            # state; keep the tensors if that is all that looks like weights.
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            keys = ", ".join(sorted(str(k) for k in obj)[:6])
            raise WeightsError(f"expected RRDBNet weights, found a dictionary with keys: {keys}")
        obj = inner
    else:
        raise WeightsError(f"expected a dictionary of tensors within {_MAX_DEPTH} levels of nesting, found deeper ones")
    raise WeightsError(f"expected a dictionary of tensors, found {_describe(obj)}")


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dictionary with {len(obj)} entries"
    return f"a {type(obj).__name__}"


def _strip_prefixes(sd: StateDict) -> StateDict:
    for prefix in ("module.", "_orig_mod.", "generator.", "net_g.", "netG."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


_OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.(?:(conv\d)\.0|(conv1x1))\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_NEW_BLOCK = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.(conv\d|conv1x1)\.(weight|bias)$")
_NEW_RENAMES = {"trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_first": "conv_first", "conv_last": "conv_last"}


def _from_oldest(sd: StateDict) -> StateDict:
    """`model.0`, `model.1.sub.N.RDBk.convj.0` (and ESRGAN+'s `…RDBk.conv1x1`), `model.1.sub.{nb}`, then one
    upsampling conv every 3 indices (`model.3`, `model.6`, …), the HR conv 2 after the last and the last conv 2
    after that: the flattened `nn.Sequential` of upsample, conv, activation blocks."""
    out: StateDict = {}
    top: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if m := _OLD_BLOCK.match(key):
            n, k, conv, plus, kind = m.groups()
            out[f"body.{n}.rdb{k}.{conv or plus}.{kind}"] = value
        elif m := _OLD_TRUNK.match(key):
            out[f"conv_body.{m.group(2)}"] = value
        elif m := _OLD_TOP.match(key):
            top.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            raise WeightsError(f"unexpected key {key!r} in an old-style ESRGAN checkpoint")
    indices = sorted(top)
    if not indices or indices[0] != 0 or len(indices) < 3:
        raise WeightsError("old-style ESRGAN checkpoint lacks its first, HR or last convolution")
    stages = len(indices) - 3
    expected = [0, *(3 * i for i in range(1, stages + 1)), 3 * stages + 2, 3 * stages + 4]
    if indices != expected:
        found = ", ".join(f"model.{i}" for i in indices)
        raise WeightsError(
            f"unsupported old-style ESRGAN checkpoint: layers at {found}, expected nearest-neighbour upsampling "
            f"convs at model.3, model.6, … (pixel-shuffle upsamplers are not supported)"
        )
    names = ["conv_first"] + [f"conv_up{i}" for i in range(1, stages + 1)] + ["conv_hr", "conv_last"]
    for name, index in zip(names, indices, strict=True):
        for kind, value in top[index].items():
            out[f"{name}.{kind}"] = value
    return out


def _from_esrgan_repo(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for key, value in sd.items():
        if m := _NEW_BLOCK.match(key):
            n, k, conv, kind = m.groups()
            out[f"body.{n}.rdb{k}.{conv}.{kind}"] = value
            continue
        name, _, kind = key.rpartition(".")
        if name in _NEW_RENAMES:
            out[f"{_NEW_RENAMES[name]}.{kind}"] = value
        elif m := re.fullmatch(r"upconv(\d)", name):
            out[f"conv_up{m.group(1)}.{kind}"] = value
        else:
            raise WeightsError(f"unexpected key {key!r} in an ESRGAN-repository checkpoint")
    return out


def to_canonical_keys(sd: StateDict) -> StateDict:
    """Rename any known RRDBNet layout to BasicSR's keys; canonical input passes through."""
    sd = _strip_prefixes(sd)
    if "model.0.weight" in sd:
        return _from_oldest(sd)
    if any(k.startswith("RRDB_trunk.") for k in sd):
        return _from_esrgan_repo(sd)
    if "conv_first.weight" in sd and any(k.startswith("body.") for k in sd):
        return sd
    sample = ", ".join(sorted(sd)[:4])
    raise WeightsError(f"not an RRDBNet: expected keys like 'conv_first.weight' or 'model.0.weight', found {sample}")


def canonical_state_dict(obj: Any) -> StateDict:
    """Any supported checkpoint object → its tensors under BasicSR's keys (not yet checked against a config)."""
    sd = to_canonical_keys(unwrap(obj))
    for key, value in sd.items():
        if not value.is_floating_point():
            raise WeightsError(f"not an RRDBNet: {key} holds {value.dtype} values, expected floating point")
    return sd


def _upsample_stages(sd: StateDict) -> int:
    ups = {int(m.group(1)) for k in sd if (m := re.fullmatch(r"conv_up(\d+)\.weight", k))}
    stages = len(ups)
    if ups != set(range(1, stages + 1)):
        raise WeightsError(f"not an RRDBNet: upsampling convs {sorted(ups)} are not numbered from 1 without gaps")
    if stages > MAX_UPSAMPLE_STAGES:
        raise WeightsError(
            f"unsupported RRDBNet: {stages} upsampling stages; esrgan runs up to {MAX_UPSAMPLE_STAGES} (x16)"
        )
    return stages


def shape_readings(sd: StateDict) -> list[RRDBConfig]:
    """Every architecture that the canonical state dict's tensor shapes allow, the likeliest first.

    Shapes fix everything but one thing: conv_first sees in_channels × unshuffle² planes, so 12 planes are a
    pixel-unshuffled 3-channel image or a 12-channel one. As spandrel does, and as every published model is, the
    likeliest reading has in == out channels; the others are listed for metadata to choose from.
    """
    try:
        first = sd["conv_first.weight"]
        last = sd["conv_last.weight"]
        grow = sd["body.0.rdb1.conv1.weight"].shape[0]
    except KeyError as e:
        raise WeightsError(f"not an RRDBNet: missing {e.args[0]!r}") from None
    num_feat, first_in = first.shape[0], first.shape[1]
    out_channels = last.shape[0]
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    num_block = max(blocks) + 1
    if blocks != set(range(num_block)):
        raise WeightsError(f"not an RRDBNet: blocks {sorted(set(range(num_block)) - blocks)} are missing")
    plus = any(k.endswith(".conv1x1.weight") for k in sd)
    stages = _upsample_stages(sd)
    readings = []
    for u in sorted((1, 2, 4), key=lambda u: (first_in != out_channels * u * u, u)):
        if first_in % (u * u) or (2**stages) % u:
            continue
        in_channels, scale = first_in // (u * u), 2**stages // u
        readings.append(RRDBConfig(in_channels, out_channels, num_feat, num_block, grow, scale, u, plus))
    if not readings:
        raise WeightsError(f"unsupported RRDBNet: {stages} upsampling stages with {first_in} input planes")
    return readings


def detect_config(sd: StateDict) -> RRDBConfig:
    """Read the architecture from the canonical state dict's tensor shapes (the likeliest reading)."""
    return shape_readings(sd)[0]


_FIELD_TEXT = {
    "in_channels": "{} input channels", "out_channels": "{} output channels", "num_feat": "{} features",
    "num_block": "{} blocks", "num_grow": "growth {}", "scale": "x{}", "unshuffle": "pixel-unshuffle {}",
}


def _field_text(name: str, value: object) -> str:
    if name == "plus":
        return "ESRGAN+" if value else "plain ESRGAN (no ESRGAN+ 1x1 convs)"
    return _FIELD_TEXT.get(name, name + " {}").format(value)


def check_scale_hint(config: RRDBConfig, scale: int | None, source: str) -> None:
    """Refuse a one-stage model that `source` says is x3: ESRGAN's x3 models upsample once by 3 with the very same
    tensors as x2 models upsample once by 2, so the shapes cannot tell them apart and esrgan will not guess."""
    if scale == 3 and config.upsample_stages == 1 and config.unshuffle == 1:
        raise WeightsError(
            f"ambiguous scale: the weights have one upsampling stage, which is x2 or x3 with identical tensors, and "
            f"{source} says x3; esrgan runs that stage only as x2, so it refuses rather than guess"
        )


def resolve_config(
    sd: StateDict, claims: Mapping[str, object] | None = None, source: str = "metadata"
) -> tuple[RRDBConfig, list[str]]:
    """The architecture of a canonical state dict, given what `source` (the file's metadata) claims about it.

    A claim that picks one of the shape readings settles the pixel-unshuffle question; a claim that no reading
    fits loses to the shapes, and each field it got wrong becomes a note, e.g. "metadata says 23 blocks; the
    tensors are 6 blocks: using the tensors". A claimed x3 for a one-stage model is refused (`check_scale_hint`).
    """
    readings = shape_readings(sd)
    if not claims:
        return readings[0], []
    fitting = [r for r in readings if all(getattr(r, k, None) == v for k, v in claims.items())]
    if fitting:
        return fitting[0], []
    best = readings[0]
    claimed_scale = claims.get("scale")
    check_scale_hint(best, claimed_scale if isinstance(claimed_scale, int) else None, source)
    notes = [
        f"{source} says {_field_text(k, v)}; the tensors are {_field_text(k, getattr(best, k))}: using the tensors"
        for k, v in claims.items()
        if hasattr(best, k) and getattr(best, k) != v
    ]
    unknown = sorted(k for k in claims if not hasattr(best, k))
    if unknown:
        notes.append(f"{source} has unknown architecture fields {', '.join(unknown)}: ignored")
    return best, notes


def expected_shapes(config: RRDBConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical key of `config` with its tensor shape, without building the network."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.bias"] = (cout,)

    conv("conv_first", c.in_channels * c.unshuffle**2, c.num_feat)
    for n in range(c.num_block):
        for k in (1, 2, 3):
            if c.plus:
                shapes[f"body.{n}.rdb{k}.conv1x1.weight"] = (c.num_grow, c.num_feat, 1, 1)
            for j in range(1, 5):
                conv(f"body.{n}.rdb{k}.conv{j}", c.num_feat + (j - 1) * c.num_grow, c.num_grow)
            conv(f"body.{n}.rdb{k}.conv5", c.num_feat + 4 * c.num_grow, c.num_feat)
    conv("conv_body", c.num_feat, c.num_feat)
    for i in range(1, c.upsample_stages + 1):
        conv(f"conv_up{i}", c.num_feat, c.num_feat)
    conv("conv_hr", c.num_feat, c.num_feat)
    conv("conv_last", c.num_feat, c.out_channels)
    return shapes


def check_matches(sd: StateDict, config: RRDBConfig) -> None:
    """Raise a WeightsError naming the first key or shape that differs from `config`."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing:
        raise WeightsError(f"weights do not match {_arch_text(config)}: missing {missing[0]!r} ({len(missing)} in all)")
    if extra:
        raise WeightsError(f"weights do not match {_arch_text(config)}: unexpected {extra[0]!r} ({len(extra)} in all)")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise WeightsError(
                f"weights do not match {_arch_text(config)}: {key} has shape "
                f"{tuple(sd[key].shape)}, expected {shape}"
            )


def _arch_text(c: RRDBConfig) -> str:
    variant = "ESRGAN+, " if c.plus else ""
    if (c.in_channels, c.out_channels) == (3, 3):
        channels = ""
    elif c.in_channels == c.out_channels:
        channels = f", {c.in_channels} channel{'s' if c.in_channels > 1 else ''}"
    else:
        channels = f", {c.in_channels} to {c.out_channels} channels"
    return f"RRDBNet x{c.scale} ({variant}{c.num_block} blocks, {c.num_feat} features, growth {c.num_grow}{channels})"


def canonicalize(obj: Any, config: RRDBConfig | None = None) -> tuple[StateDict, RRDBConfig]:
    """Any supported checkpoint object → (canonical state dict, its architecture), verified. A given `config` must
    match the tensors exactly; without one it is read from their shapes."""
    sd = canonical_state_dict(obj)
    config = config or detect_config(sd)
    check_matches(sd, config)
    return sd, config


def describe(config: RRDBConfig) -> str:
    """A short human description of an architecture, for messages and `info`."""
    params = sum(math.prod(s) for s in expected_shapes(config).values())
    return f"{_arch_text(config)}, {params:,} parameters"
