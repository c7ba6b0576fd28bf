"""Reading and writing weight files: safetensors first, legacy pickles only through torch's safe loader."""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from esrgan_cli.arch import RRDBConfig, RRDBNet
from esrgan_cli.atomic import atomic_write
from esrgan_cli.checkpoint import StateDict, canonicalize, describe
from esrgan_cli.errors import WeightsError
from esrgan_cli.hashing import sha256_of

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


def _config_from_metadata(meta: dict[str, str]) -> RRDBConfig | None:
    """Our own files carry `esrgan.config`; BasicSR-style exports carry loose fields."""
    try:
        if META_CONFIG in meta:
            return RRDBConfig.from_json(meta[META_CONFIG])
        if meta.get("arch") == "RRDBNet" and "num_block" in meta:
            return RRDBConfig(
                num_feat=int(meta.get("num_feat", 64)),
                num_block=int(meta["num_block"]),
                num_grow=int(meta.get("num_grow_ch", 32)),
                scale=int(meta.get("scale", 4)),
                in_channels=int(meta.get("num_in_ch", 3)),
                out_channels=int(meta.get("num_out_ch", 3)),
            )
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise WeightsError(f"unreadable architecture in the file's metadata: {e}") from None
    return None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def _load_pickle(path: Path) -> object:
    try:
        # weights_only=True refuses any pickle that would import or call code;
        # there is deliberately no fallback to the unsafe loader.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused to load: the file holds Python objects beyond tensors, which could run code "
            f"({_first_line(e).removeprefix('Weights only load failed. ')[:120]}); "
            "convert it on a trusted machine to safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)[:160]})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_weights(path: Path) -> LoadedWeights:
    """Load any supported weights file and return canonical, verified, fp32 weights."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(8)
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors" or (path.suffix not in PICKLE_SUFFIXES and not _looks_like_pickle(head)):
        obj, meta = _load_safetensors(path)
    else:
        obj = _load_pickle(path)
    sd, config = canonicalize(obj, _config_from_metadata(meta))
    source_dtype = sd["conv_first.weight"].dtype
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    return LoadedWeights(sd, config, meta, path, source_dtype)


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip archive (PK..); the legacy format starts with a pickle protocol byte.
    return head.startswith(b"PK") or head[:1] == b"\x80"


def build_model(weights: LoadedWeights) -> RRDBNet:
    model = RRDBNet(weights.config)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


def save_safetensors(
    sd: StateDict, config: RRDBConfig, path: Path, extra_metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write canonical weights with the architecture in the metadata, atomically."""
    path = Path(path)
    meta = {META_ARCH: "RRDBNet", META_CONFIG: config.to_json(), **(extra_metadata or {})}
    tensors = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in sd.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def describe_weights(weights: LoadedWeights, source: str) -> dict[str, object]:
    """Everything `esrgan info` shows, as plain data."""
    c = weights.config
    return {
        "source": source,
        "path": str(weights.path),
        "architecture": "RRDBNet",
        "description": describe(c),
        "config": json.loads(c.to_json()),
        "scale": c.scale,
        "parameters": sum(v.numel() for v in weights.state_dict.values()),
        "dtype": str(weights.source_dtype).removeprefix("torch."),
        "macs_per_input_pixel": c.macs_per_input_pixel(),
        "sha256": sha256_of(weights.path),
        "size_bytes": weights.path.stat().st_size,
        "metadata": weights.metadata,
    }
