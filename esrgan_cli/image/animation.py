"""Writing several frames into one file: an animation (GIF, WebP, APNG) or the pages of a TIFF, with the timing
the input had. Decoding the frames is in decode.py; upscaling them is in pipeline.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from esrgan_cli.errors import ImageWriteError
from esrgan_cli.image.decode import Blend, Disposal, Frames

MULTI_FRAME_FORMATS = frozenset({"GIF", "WEBP", "PNG", "TIFF"})
_GIF_DISPOSAL: dict[Disposal, int] = {"none": 1, "background": 2, "previous": 3}
_APNG_DISPOSAL: dict[Disposal, int] = {"none": 0, "background": 1, "previous": 2}
_APNG_BLEND: dict[Blend, int] = {"source": 0, "over": 1}
_RGBA_FILL_MODES = frozenset({"RGB", "RGBA", "LA"})  # where Pillow's APNG writer can paste its RGBA background fill


@dataclass(frozen=True)
class Animation:
    """The frames after the first, upscaled, and how the input played them (`timing.default_image`: the first is
    the hidden default image of an APNG, and `rest` is the whole animation)."""

    rest: tuple[Image.Image, ...]
    timing: Frames

    @property
    def count(self) -> int:
        return len(self.rest) + 1


def frames_for(frames: Frames, fmt: str, notes: list[str]) -> Frames:
    """The frames a file in `fmt` gets, before any work; what is lost is noted.

    An APNG's hidden default image stays hidden in an APNG, where Pillow writes it as one (`default_image=True`),
    so viewers without APNG support still show it; every other format would show it as the animation's first
    frame, so it is left out there."""
    if frames.default_image and fmt != "PNG":
        frames = dataclasses.replace(frames, images=frames.animated, default_image=False)
    if fmt == "PNG" and any(f.bit_depth == 16 for f in frames.images):
        # Pillow's APNG writer compares each frame with the canvas before it in 8 bits (values over 255 all look
        # alike) to crop it to what changed, or merge it into the frame before: 16-bit frames would lose most of
        # their changes. 8-bit frames compare exactly.
        notes.append("16-bit frames are written as an 8-bit APNG: Pillow's APNG writer compares frames in 8 bits")
        images = tuple(dataclasses.replace(f, bit_depth=8) if f.bit_depth == 16 else f for f in frames.images)
        frames = dataclasses.replace(frames, images=images)
    return frames


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
        disposal = [codes[d] for d in (_apng_disposal(animation) if fmt == "PNG" else timing.disposal)]
        # One value for all when they agree: Pillow's GIF writer cannot take a list once it merged every frame
        # into one (identical frames).
        params["disposal"] = disposal[0] if len(set(disposal)) == 1 else disposal
    if fmt == "PNG":
        params["blend"] = _apng_blend(animation)
        # Pillow's default_image=True writes the first image as the hidden default image and the rest as the
        # animation, with the durations, disposal and blend counted from the rest.
        params["default_image"] = timing.default_image
    return params


def _apng_disposal(animation: Animation) -> list[Disposal]:
    """Each APNG frame's dispose op: the input's, as far as Pillow's writer can write it.

    The writer clears to background with an RGBA fill, which it cannot paste into an L or I;16 frame (it raises),
    and treats "previous" on the first frame as "background"; such frames get "none". That shows the same:
    every frame is the whole canvas, and the writer stores what differs from what the disposal leaves, so the op
    changes which pixels are stored, not what is shown."""
    disposal = list(animation.timing.disposal)
    if {im.mode for im in animation.rest} <= _RGBA_FILL_MODES:
        return disposal
    return ["none" if d == "background" or (d == "previous" and i == 0) else d for i, d in enumerate(disposal)]


def _apng_blend(animation: Animation) -> list[int]:
    """Each APNG frame's blend op: the input's where it draws the frame as it is, else "source".

    Every frame is already the whole canvas as the input's viewer showed it, so "over" would composite a frame
    with transparency a second time over what was under it; it draws the same as "source" only on an opaque
    frame, and on the first image of a file without a hidden default image (drawn onto an empty canvas)."""
    timing = animation.timing
    frames: Sequence[Image.Image | None] = animation.rest if timing.default_image else (None, *animation.rest)
    wanted = timing.blend or ("source",) * len(frames)
    return [_APNG_BLEND["over" if op == "over" and (im is None or _opaque(im)) else "source"]
            for op, im in zip(wanted, frames, strict=True)]


def _opaque(im: Image.Image) -> bool:
    if "A" not in im.mode:
        return True
    low, _ = im.getchannel("A").getextrema()
    return bool(low == 255)
