"""What the page asks for, checked: the options of one upscale, as `esrgan upscale` would get them. Every refusal
is one line (an EsrganError), never a traceback."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from esrgan_cli.defaults import DEFAULT_QUALITY, FORMAT_SUFFIXES, FORMATS, MIN_TILE
from esrgan_cli.errors import EsrganError
from esrgan_cli.serve.models import resolve_choice


class RequestError(EsrganError):
    """The page asked for something the server does not do: one line for the page."""


@dataclass(frozen=True)
class JobSettings:
    model: str  # the page's name for it
    spec: str  # what load_model gets: a registry name or a path inside --models-dir
    scale: int | None  # 2, 3 or 4 (the final scale); None with `width`
    width: int | None  # a target width in pixels
    tile: int | None  # None: auto
    format: str | None  # a --format name, or None: keep the input's where esrgan writes it, else png
    alpha: Literal["resize", "model"]
    quality: int

    def outscale(self, model_scale: int, input_width: int) -> float | None:
        """--outscale for this request: None when the model's own scale is what was asked for."""
        wanted = self.width / input_width if self.width is not None else float(self.scale or model_scale)
        return None if wanted == model_scale else wanted

    def output_name(self, input_name: str) -> str:
        """NAME_x2.EXT: the input's extension where esrgan writes it (else .png after its whole name, as batches
        do: tex.dds -> tex.dds_x4.png), or the chosen format's."""
        tag = f"_w{self.width}" if self.width is not None else f"_x{self.scale}" if self.scale else "_x"
        path = Path(input_name)
        if self.format is not None:
            return f"{path.stem}{tag}{FORMAT_SUFFIXES[self.format]}"
        if path.suffix.lower() in FORMATS:
            return f"{path.stem}{tag}{path.suffix}"
        return f"{input_name}{tag}.png"


def job_settings(data: dict[str, Any], models_dir: Path | None) -> JobSettings:
    """The page's JSON → checked settings; unknown values are refused with one line naming the field."""
    model = data.get("model")
    spec = resolve_choice(model, models_dir)
    scale, width = _scale(data.get("scale", "4"), data.get("width"))
    fmt = data.get("format") or "keep"
    if fmt not in ("keep", *FORMAT_SUFFIXES):
        raise RequestError(f"format {str(fmt)[:20]!r}: use keep, {', '.join(FORMAT_SUFFIXES)}")
    alpha = data.get("alpha", "resize")
    if alpha not in ("resize", "model"):
        raise RequestError(f"alpha {str(alpha)[:20]!r}: use resize or model")
    quality = _integer(data.get("quality", DEFAULT_QUALITY), "quality")
    if not 1 <= quality <= 100:
        raise RequestError(f"quality {quality}: use 1 to 100")
    return JobSettings(cast(str, model), spec, scale, width, tile_setting(data.get("tile", "auto")),
                       None if fmt == "keep" else fmt, cast(Literal["resize", "model"], alpha), quality)


def _scale(scale: object, width: object) -> tuple[int | None, int | None]:
    if scale == "width":
        w = _integer(width, "width")
        if not 1 <= w <= 65536:
            raise RequestError(f"width {w}: use 1 to 65536 pixels")
        return None, w
    s = _integer(scale, "scale")
    if s not in (1, 2, 3, 4, 8):
        raise RequestError(f"scale {s}: use 2, 3, 4 or a target width")
    return s, None


def tile_setting(tile: object) -> int | None:
    if tile in (None, "", "auto"):
        return None
    n = _integer(tile, "tile")
    if n != 0 and n < MIN_TILE:
        raise RequestError(f"tile {n}: use auto, 0 (whole image) or at least {MIN_TILE}")
    return n


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise RequestError(f"{name}: a whole number, not {value!r}")
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise RequestError(f"{name}: a whole number, not {str(value)[:20]!r}")
