"""The models the web page may name: registry names, and weights files directly inside --models-dir. The browser
never names a path on the server; anything else is refused with one line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from esrgan_cli.errors import ModelNotFoundError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model picker."""

    name: str  # what the page sends back
    label: str  # what the picker shows
    scale: int | None  # None: a --models-dir file, known once loaded
    bundled: bool
    cached: bool  # usable without a download
    default: bool


def model_choices(models_dir: Path | None) -> list[ModelChoice]:
    """The registry (the default first, bundled and cached marked), then --models-dir's weights files. No torch."""
    from esrgan_cli.api import available_models

    choices = []
    for m in available_models():
        mark = "bundled" if m.bundled else "cached" if m.cached else "downloads on first use"
        choices.append(ModelChoice(m.name, f"{m.name} ({mark})", m.scale, m.bundled, m.cached, m.default))
    for path in dir_models(models_dir):
        choices.append(ModelChoice(path.name, f"{path.name} (--models-dir)", None, False, True, False))
    return choices


def dir_models(models_dir: Path | None) -> list[Path]:
    if models_dir is None:
        return []
    try:
        names = sorted(os.listdir(models_dir))
    except OSError:
        return []
    return [models_dir / n for n in names
            if n.lower().endswith(WEIGHT_SUFFIXES) and not n.startswith(".") and (models_dir / n).is_file()]


def resolve_choice(name: object, models_dir: Path | None) -> str:
    """The `load_model` spec for what the page sent: a registry name as it is, or the path of a file directly
    inside --models-dir (symlinks resolved, and still inside it). Raises ModelNotFoundError with one line."""
    from esrgan_cli.model.registry import load_registry

    if not isinstance(name, str) or not name:
        raise ModelNotFoundError("no model chosen")
    registry = load_registry()
    if name in registry.models:
        return name
    shown = name if len(name) <= 80 else name[:77] + "..."
    if "/" in name or "\\" in name or name.startswith((".", "~")) or name.startswith("hf:") or "\0" in name:
        where = "files directly inside --models-dir" if models_dir else "nothing else (no --models-dir given)"
        raise ModelNotFoundError(f"model {shown!r}: the page may name registry models or {where}, not a path")
    if models_dir is not None:
        root = models_dir.resolve()
        path = (models_dir / name).resolve()
        if path.parent == root and path.is_file() and path.name.lower().endswith(WEIGHT_SUFFIXES):
            return str(path)
        if (models_dir / name).exists():
            raise ModelNotFoundError(f"model {shown!r}: not a weights file inside --models-dir")
    known = ", ".join(c.name for c in model_choices(models_dir))
    raise ModelNotFoundError(f"no model named {shown!r} (known: {known})")
