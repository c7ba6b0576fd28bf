"""Render the model card's side-by-side figure: bicubic, then each model, on the same input.

    python docs/side_by_side.py examples/cottage.png -o docs/compact-psnr-vs-gan.png \
        --model compact-psnr-x4 "PSNR model" --model compact-x4 "GAN model (default)" --zoom 40,150,200,200

Every panel is the ×4 output of the whole input (no tiling), so differences come from the models alone. `--zoom
X,Y,W,H` adds a second row: that region of each output (output pixels), enlarged 2× with nearest neighbours.

`--web-jpeg FACTOR,QUALITY` first makes the input what a photo found on the web looks like: shrunk FACTOR times
(Pillow's antialiased bicubic) and saved as a JPEG at QUALITY; that JPEG is the models' input:

    python docs/side_by_side.py examples/chelsea.png -o docs/real-photo.png --web-jpeg 2,55 --zoom 300,200,300,200 \
        --model compact-x4 compact-x4 --model compact-real-x4 "compact-real-x4 (default)" \
        --model ../shared/weights/realesrgan-x4plus.fp16.safetensors "Real-ESRGAN x4plus"
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

import esrgan_cli
from esrgan_cli.image.decode import read_image
from esrgan_cli.image.encode import contact_sheet, to_uint8
from esrgan_cli.image.resize import imresize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--zoom", default=None, metavar="X,Y,W,H")
    parser.add_argument("--web-jpeg", default=None, metavar="FACTOR,QUALITY")
    parser.add_argument("--model", nargs=2, action="append", metavar=("MODEL", "LABEL"), required=True)
    args = parser.parse_args()

    path = args.image if args.web_jpeg is None else web_jpeg(args.image, args.web_jpeg, args.output)
    image = read_image(path)
    panels = [Image.fromarray(imresize(to_uint8(image.rgb), 4))]
    labels = ["bicubic"]
    with Image.open(path) as source:
        source.load()
        for spec, label in args.model:
            panels.append(esrgan_cli.load_model(spec, device="cpu").upscale(source, tile=0))
            labels.append(label)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(panels, labels)
    if args.zoom:
        x, y, w, h = (int(v) for v in args.zoom.split(","))
        zoomed = [p.crop((x, y, x + w, y + h)).resize((2 * w, 2 * h), Image.Resampling.NEAREST) for p in panels]
        detail = contact_sheet(zoomed, [f"{label}, detail x2" for label in labels])
        both = Image.new("RGB", (max(sheet.width, detail.width), sheet.height + detail.height), "white")
        both.paste(sheet, (0, 0))
        both.paste(detail, (0, sheet.height))
        sheet = both
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output}")


def web_jpeg(photo: Path, spec: str, output: Path) -> Path:
    """The photo shrunk and saved as a JPEG, written beside the figure (…-input.jpg) so readers can try it too."""
    factor, quality = (int(v) for v in spec.split(","))
    with Image.open(photo) as img:
        small = img.convert("RGB").resize((img.width // factor, img.height // factor), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    target = output.with_name(f"{output.stem}-input.jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buf.getvalue())
    return target


if __name__ == "__main__":
    main()
