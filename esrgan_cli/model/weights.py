"""Reading and writing weight files: safetensors first, legacy pickles only through torch's safe loader."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from esrgan_cli.errors import WeightsError, first_line
from esrgan_cli.files import atomic_write, sha256_of
from esrgan_cli.model._layouts import (
    StateDict,
    canonical_state_dict,
    check_matches,
    check_scale_hint,
    describe,
    resolve_config,
)
from esrgan_cli.model.arch import RRDBConfig, RRDBNet

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
META_ARCH = "esrgan.arch"
META_CONFIG = "esrgan.config"


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: StateDict
    config: RRDBConfig
    metadata: dict[str, str]
    path: Path
    source_dtype: torch.dtype  # what the file stored (weights are widened to fp32 on load)
    # Where the file's own description of itself was set aside, one line each (`info` shows them).
    notes: tuple[str, ...] = field(default=())


_CONFIG_FIELDS = {f.name for f in fields(RRDBConfig)}
# BasicSR-style exports: metadata key → RRDBConfig field. Only the keys present are claimed.
_LOOSE_FIELDS = {
    "num_in_ch": "in_channels", "num_out_ch": "out_channels", "num_feat": "num_feat", "num_block": "num_block",
    "num_grow_ch": "num_grow", "scale": "scale",
}


def _claims_from_metadata(meta: dict[str, str]) -> tuple[dict[str, object], list[str]]:
    """What the metadata says about the architecture, field by field, and notes on what could not be read.

    Our own files carry `esrgan.config` (JSON); BasicSR-style exports carry loose fields. The tensors decide in the
    end (`resolve_config`): the metadata only picks between readings the shapes allow."""
    claims: dict[str, object] = {}
    try:
        if META_CONFIG in meta:
            raw = json.loads(meta[META_CONFIG])
            if not isinstance(raw, dict):
                raise ValueError(f"{META_CONFIG} is not a JSON object")
            for key, value in raw.items():
                if key == "unshuffle" and value == 0:
                    continue  # "BasicSR's default for the scale": nothing claimed
                if key in _CONFIG_FIELDS and not isinstance(value, (int, bool)):
                    raise ValueError(f"{key} is {value!r}")
                claims[key] = value
        elif meta.get("arch") == "RRDBNet":
            claims = {field: int(meta[key]) for key, field in _LOOSE_FIELDS.items() if key in meta}
    except (ValueError, TypeError) as e:
        return {}, [f"metadata's architecture is unreadable ({first_line(e, 80)}): using the tensors"]
    return claims, []


_NAME_SCALE = re.compile(r"(?<![a-z0-9])(?:(\d+)x|x(\d+))(?![a-z0-9])")


def _scale_from_name(path: Path) -> int | None:
    """The scale a community file name states (`3x_Name.pth`, `name_x3.pth`), if exactly one."""
    found = {int(a or b) for a, b in _NAME_SCALE.findall(path.stem.lower())}
    return found.pop() if len(found) == 1 else None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        # Read by Python, not by the library's own reader: a Ctrl-C during the read then stays a KeyboardInterrupt
        # (exit 130), where the library reported the interrupted read as an unreadable file.
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size]) if 0 < size <= len(data) - 8 else None
        if not isinstance(header, dict):
            raise ValueError("no safetensors header")
        meta = header.get("__metadata__") or {}
        return load(data), {str(k): str(v) for k, v in meta.items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def _load_pickle(path: Path) -> object:
    try:
        # weights_only=True refuses any pickle that would import or call code;
        # there is deliberately no fallback to the unsafe loader.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused to load: the file holds Python objects beyond tensors, which could run code "
            f"({first_line(e, 300).removeprefix('Weights only load failed. ')[:120]}); "
            "convert it on a trusted machine to safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({first_line(e, 160)})") from None


def load_weights(path: Path) -> LoadedWeights:
    """Load any supported weights file and return canonical, verified, fp32 weights."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(8)
    meta: dict[str, str] = {}
    obj: object
    if path.suffix == ".safetensors" or (path.suffix not in PICKLE_SUFFIXES and not _looks_like_pickle(head)):
        obj, meta = _load_safetensors(path)
    else:
        obj = _load_pickle(path)
    return from_checkpoint(obj, path, meta)


def from_checkpoint(
    obj: object, path: Path = Path("<state dict>"), meta: dict[str, str] | None = None
) -> LoadedWeights:
    """A checkpoint's contents (a state dict in any supported layout, or a wrapper around one), with the metadata
    of the file it came from → canonical, verified, fp32 weights; the architecture is read from the shapes."""
    meta = meta or {}
    sd = canonical_state_dict(obj)
    claims, notes = _claims_from_metadata(meta)
    config, disagreements = resolve_config(sd, claims, "metadata")
    if "scale" not in claims:
        check_scale_hint(config, _scale_from_name(path), f"the file name {path.name!r}")
    check_matches(sd, config)
    source_dtype = sd["conv_first.weight"].dtype
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    return LoadedWeights(sd, config, meta, path, source_dtype, tuple(notes + disagreements))


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip archive (PK..); the legacy format starts with a pickle protocol byte.
    return head.startswith(b"PK") or head[:1] == b"\x80"


def build_model(weights: LoadedWeights) -> RRDBNet:
    model = RRDBNet(weights.config)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


# An absolute path inside a longer text: POSIX or home-relative, a drive letter, or a UNC share. Not a relative
# path (`p4/model.safetensors`), a URL's `//` or a ratio such as `0.6/1.1`: the character before it is no word's.
_EMBEDDED_PATH = re.compile(r"(?<![\w./:~\\-])(?:~?/|[A-Za-z]:[\\/]|\\\\)(?=[^\s/\\])[^\s\"'<>|,;]*")
_WHOLE_PATH = re.compile(r"(?:~?/|[A-Za-z]:[\\/]|\\\\)[^/\\]")


def _file_name(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1]


def _strip_text(text: str) -> str:
    if _WHOLE_PATH.match(text):
        return _file_name(text)  # the whole value is one path, spaces and all
    return _EMBEDDED_PATH.sub(lambda m: _file_name(m.group()), text)


def _strip_json(value: object) -> object:
    if isinstance(value, str):
        return _strip_text(value)
    if isinstance(value, list):
        return [_strip_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_json(v) for k, v in value.items()}
    return value


def strip_local_paths(metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` with every absolute path cut to its file name, in plain values and inside JSON ones (a training
    config names its data folder, its VGG file and its init checkpoint): weights are shared, and the folders of the
    machine they were made on are nobody else's business (issue 26, item 10). What is left (`data`,
    `vgg19-….safetensors`) still says what was used. Relative paths, URLs and `hf:` locations are kept."""
    cleaned = {}
    for key, value in metadata.items():
        if value[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if parsed is not None:
                stripped = _strip_json(parsed)
                cleaned[key] = value if stripped == parsed else json.dumps(stripped)
                continue
        cleaned[key] = _strip_text(value)
    return cleaned


def save_safetensors(
    sd: StateDict, config: RRDBConfig, path: Path, extra_metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write canonical weights with the architecture in the metadata (absolute paths stripped), atomically."""
    path = Path(path)
    meta = strip_local_paths({META_ARCH: "RRDBNet", META_CONFIG: config.to_json(), **(extra_metadata or {})})
    tensors = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def convert_to_safetensors(source: Path, target: Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Any supported checkpoint → canonical safetensors at `target` (atomically), in the fp32 `load_weights` gives."""
    weights = load_weights(source)
    save_safetensors(weights.state_dict, weights.config, target, extra_metadata)


def describe_weights(weights: LoadedWeights, source: str) -> dict[str, object]:
    """Everything `esrgan info` shows, as plain data."""
    c = weights.config
    notes = list(weights.notes)
    return {
        "source": source,
        "path": str(weights.path),
        "architecture": "RRDBNet",
        "variant": "ESRGAN+" if c.plus else "ESRGAN",
        # Notes ride along in the description too, which the text output already prints.
        "description": "; ".join([describe(c), *notes]),
        "config": c.to_dict(),
        "scale": c.scale,
        "parameters": sum(v.numel() for v in weights.state_dict.values()),
        "dtype": str(weights.source_dtype).removeprefix("torch."),
        "macs_per_input_pixel": c.macs_per_input_pixel(),
        "sha256": sha256_of(weights.path),
        "size_bytes": weights.path.stat().st_size,
        "metadata": weights.metadata,
        "notes": notes,
    }
