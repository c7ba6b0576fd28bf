"""State dicts of RRDBNet as found in the wild, brought to BasicSR's canonical keys.

Pure tensor-dictionary work, no file I/O: `canonicalize` unwraps containers
(`params_ema`, `params`, `state_dict`, `module.` prefixes…), renames the oldest
ESRGAN layout (`model.N`) and the ESRGAN-repository layout (`RRDB_trunk`) to
BasicSR's names, and `detect_config` reads the architecture from tensor shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from esrgan_cli.arch import RRDBConfig
from esrgan_cli.errors import WeightsError

StateDict = dict[str, torch.Tensor]

# Checked in this order: BasicSR stores the EMA weights beside the raw ones and
# the EMA ones are the model that was evaluated.
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "net_g", "generator", "model")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap(obj: Any) -> StateDict:
    """Find the tensor dictionary inside a checkpoint container."""
    seen = 0
    while not _is_state_dict(obj):
        seen += 1
        if not isinstance(obj, Mapping) or seen > 4:
            raise WeightsError(f"expected a dictionary of tensors, found {_describe(obj)}")
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            # Training checkpoints mix tensors with step counters and optimizer
            # state; keep the tensors if that is all that looks like weights.
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            keys = ", ".join(sorted(str(k) for k in obj)[:6])
            raise WeightsError(f"expected RRDBNet weights, found a dictionary with keys: {keys}")
        obj = inner
    return dict(obj)


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dictionary with {len(obj)} entries"
    return f"a {type(obj).__name__}"


def _strip_prefixes(sd: StateDict) -> StateDict:
    for prefix in ("module.", "_orig_mod.", "generator.", "net_g."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


_OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_NEW_BLOCK = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_NEW_RENAMES = {"trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_first": "conv_first", "conv_last": "conv_last"}


def _from_oldest(sd: StateDict) -> StateDict:
    """`model.0`, `model.1.sub.N.RDBk.convj.0`, `model.1.sub.{nb}`, then upsampling convs every 3 indices."""
    out: StateDict = {}
    top: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if m := _OLD_BLOCK.match(key):
            n, k, j, kind = m.groups()
            out[f"body.{n}.rdb{k}.conv{j}.{kind}"] = value
        elif m := _OLD_TRUNK.match(key):
            out[f"conv_body.{m.group(2)}"] = value
        elif m := _OLD_TOP.match(key):
            top.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            raise WeightsError(f"unexpected key {key!r} in an old-style ESRGAN checkpoint")
    indices = sorted(top)
    if not indices or indices[0] != 0 or len(indices) < 3:
        raise WeightsError("old-style ESRGAN checkpoint lacks its first, HR or last convolution")
    # model.0 is conv_first; the last two convs are HRconv and conv_last; the
    # ones between are the upsampling convs (model.3, model.6, …).
    names = ["conv_first"] + [f"conv_up{i}" for i in range(1, len(indices) - 2)] + ["conv_hr", "conv_last"]
    for name, index in zip(names, indices, strict=True):
        for kind, value in top[index].items():
            out[f"{name}.{kind}"] = value
    return out


def _from_esrgan_repo(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for key, value in sd.items():
        if m := _NEW_BLOCK.match(key):
            n, k, j, kind = m.groups()
            out[f"body.{n}.rdb{k}.conv{j}.{kind}"] = value
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


def detect_config(sd: StateDict) -> RRDBConfig:
    """Read the architecture from the canonical state dict's tensor shapes."""
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
    stages = sum(1 for i in range(1, 5) if f"conv_up{i}.weight" in sd)
    # conv_first sees in_channels × unshuffle² planes; assume in == out channels
    # (true of every published model) to tell 12 = 3×2² from a 12-channel input.
    unshuffle = next((u for u in (1, 2, 4) if first_in == out_channels * u * u), 1)
    in_channels = first_in // (unshuffle * unshuffle)
    scale = 2**stages / unshuffle
    if scale != int(scale) or int(scale) not in (1, 2, 4, 8):
        raise WeightsError(f"unsupported RRDBNet: {stages} upsampling stages with pixel-unshuffle {unshuffle}")
    try:
        return RRDBConfig(in_channels, out_channels, num_feat, num_block, grow, int(scale), unshuffle)
    except ValueError as e:
        raise WeightsError(f"unsupported RRDBNet: {e}") from None


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
    return f"RRDBNet x{c.scale} ({c.num_block} blocks, {c.num_feat} features, growth {c.num_grow})"


def canonicalize(obj: Any, config: RRDBConfig | None = None) -> tuple[StateDict, RRDBConfig]:
    """Any supported checkpoint object → (canonical state dict, its architecture), verified."""
    sd = to_canonical_keys(unwrap(obj))
    for key, value in sd.items():
        if not value.is_floating_point():
            raise WeightsError(f"not an RRDBNet: {key} holds {value.dtype} values, expected floating point")
    config = config or detect_config(sd)
    check_matches(sd, config)
    return sd, config


def describe(config: RRDBConfig) -> str:
    """A short human description of an architecture, for messages and `info`."""
    params = sum(math.prod(s) for s in expected_shapes(config).values())
    return f"{_arch_text(config)}, {params:,} parameters"
