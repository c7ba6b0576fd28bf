"""Writing several frames into one file: an animation (GIF, WebP, APNG) or the pages of a TIFF, with the timing
the input had. Decoding the frames is in decode.py; upscaling them is in pipeline.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from esrgan_cli.errors import ImageWriteError
from esrgan_cli.image.decode import Disposal, Frames

MULTI_FRAME_FORMATS = frozenset({"GIF", "WEBP", "PNG", "TIFF"})
_GIF_DISPOSAL: dict[Disposal, int] = {"none": 1, "background": 2, "previous": 3}
_APNG_DISPOSAL: dict[Disposal, int] = {"none": 0, "background": 1, "previous": 2}
_APNG_BLEND_SOURCE = 0  # each frame replaces the canvas: frames are whole composited canvases already


@dataclass(frozen=True)
class Animation:
    """The frames after the first, upscaled, and how the input played them."""

    rest: tuple[Image.Image, ...]
    timing: Frames

    @property
    def count(self) -> int:
        return len(self.rest) + 1


def check_frames(frames: Frames, fmt: str, notes: list[str]) -> None:
    """Before any work: can `fmt` hold these frames? Refuse what it cannot; note what is lost."""
    sizes = {(f.width, f.height) for f in frames.images}
    if len(sizes) > 1 and fmt != "TIFF":
        raise ImageWriteError(f"its {len(frames.images)} pages have different sizes, which only TIFF can hold; "
                              "write a .tif, or pass --first-frame")
    if fmt == "TIFF" and not frames.pages and frames.durations:
        notes.append(f"TIFF pages have no frame durations: the {len(frames.images)} frames are written as pages")


def uniform_modes(images: Sequence[Image.Image], fmt: str) -> list[Image.Image]:
    """One mode for every frame of an animation (the encoders expect it); TIFF pages keep their own."""
    modes = {im.mode for im in images}
    if fmt == "TIFF" or len(modes) == 1:
        return list(images)
    target = "RGBA" if any("A" in m for m in modes) else "RGB"
    return [im if im.mode == target else im.convert(target) for im in images]


def save_params(animation: Animation, fmt: str) -> dict[str, object]:
    """Pillow's `save` arguments that write every frame into `fmt` with the input's durations, loop and disposal."""
    if fmt not in MULTI_FRAME_FORMATS:
        raise ImageWriteError(f"{fmt} holds one frame")  # pipeline.py upscales only the first for such formats
    params: dict[str, object] = {"save_all": True, "append_images": list(animation.rest)}
    timing = animation.timing
    if fmt == "TIFF":
        return params
    if timing.durations:
        # GIF counts in hundredths of a second; Pillow takes milliseconds and rounds down, so round here.
        params["duration"] = [round(d) for d in timing.durations] if fmt == "GIF" else list(timing.durations)
    loop = timing.loop
    if loop is not None:
        params["loop"] = loop
    elif fmt != "GIF":
        params["loop"] = 1  # the input plays once (a GIF without a loop count); WebP and APNG say so explicitly
    codes = {"GIF": _GIF_DISPOSAL, "PNG": _APNG_DISPOSAL}.get(fmt)
    if timing.disposal and codes:
        disposal = [codes[d] for d in timing.disposal]
        # One value for all when they agree: Pillow's GIF writer cannot take a list once it merged every frame
        # into one (identical frames).
        params["disposal"] = disposal[0] if len(set(disposal)) == 1 else disposal
    if fmt == "PNG":
        params["blend"] = [_APNG_BLEND_SOURCE] * animation.count
        params["default_image"] = False
    return params
