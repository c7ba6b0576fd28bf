"""The command line's behaviour as a snapshot, to compare two versions of esrgan (a refactor must change nothing).

    python tests/cli_snapshot.py run OLD_VENV/bin/python before/    # each version's python, the same inputs
    python tests/cli_snapshot.py run NEW_VENV/bin/python after/
    python tests/cli_snapshot.py compare before/ after/             # exit 0 when they match

(Or one python for both, with PYTHONPATH=OLD_CHECKOUT for the first: it is passed on to the commands.)

`run` makes a fixed folder of inputs (every mode, 16-bit, alpha, palettes, a GIF and an APNG animation, JPEG, WebP,
TIFF, BMP, a broken PNG, a text file named .jpg, a subfolder) and runs fixed commands on it: batches (with a rerun,
tiles, a refused --format collision, --ray local), single files, a missing file, a bad option, info and models list.
It keeps every output, journal, report, stdout, stderr and exit code. `compare` wants outputs byte-identical and the
rest equal apart from times, the checkout's path and the order of a cluster's report entries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(24)

    def noise(h: int, w: int, c: int) -> np.ndarray:
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, c), dtype=np.uint8)
        big = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]
        return np.clip(big.astype(int) + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)

    Image.fromarray(noise(24, 32, 3)).save(out / "rgb.png")
    Image.fromarray(noise(20, 28, 4), "RGBA").save(out / "rgba.png")
    Image.fromarray(noise(16, 20, 1)[..., 0], "L").save(out / "gray.png")
    Image.fromarray(noise(16, 24, 2), "LA").save(out / "gray_alpha.png")
    Image.fromarray(noise(24, 24, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(out / "palette.png")
    pal_t = Image.fromarray(noise(16, 16, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal_t.info["transparency"] = 0
    pal_t.save(out / "palette_trns.png", transparency=0)
    sixteen = (noise(18, 22, 1)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(out / "gray16.png")
    Image.fromarray(noise(20, 20, 3)).save(out / "photo.jpg", quality=80)
    Image.fromarray(noise(20, 20, 3)).convert("CMYK").save(out / "cmyk.jpg", quality=90)
    Image.fromarray(noise(18, 18, 3)).save(out / "pic.webp", quality=85)
    Image.fromarray(noise(18, 18, 3)).save(out / "pic.tiff")
    Image.fromarray(noise(14, 14, 3)).save(out / "pic.bmp")
    frames = [Image.fromarray(noise(16, 16, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
              for _ in range(3)]
    frames[0].save(out / "anim.gif", save_all=True, append_images=frames[1:], duration=[100, 200, 150], loop=0)
    apng = [Image.fromarray(noise(12, 12, 4), "RGBA") for _ in range(2)]
    apng[0].save(out / "anim.png", save_all=True, append_images=apng[1:], duration=[80, 120], loop=2)
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (out / "text.jpg").write_text("not an image")
    (out / "notes.txt").write_text("ignored")
    sub = out / "sub"
    sub.mkdir(exist_ok=True)
    Image.fromarray(noise(20, 16, 3)).save(sub / "nested.png")


COMMANDS = [
    ("batch", ["upscale", "{IN}", "-o", "{R}/batch", "-r", "--report", "{R}/batch_report.json"]),
    ("batch_rerun", ["upscale", "{IN}", "-o", "{R}/batch", "-r", "--report", "{R}/batch_rerun_report.json"]),
    ("batch_fmt", ["upscale", "{IN}", "-o", "{R}/batch_fmt", "-r", "--format", "png", "--suffix", "_x4",
                   "--outscale", "2", "--tile", "16", "--report", "{R}/batch_fmt_report.json"]),
    ("batch_tile", ["upscale", "{IN}", "-o", "{R}/batch_tile", "-r", "--suffix", "_x4", "--outscale", "2", "--tile",
                    "16", "--overlap", "8", "--report", "{R}/batch_tile_report.json"]),
    ("single", ["upscale", "{IN}/rgba.png", "-o", "{R}/single.png"]),
    ("single_anim", ["upscale", "{IN}/anim.gif", "-o", "{R}/single_anim.gif"]),
    ("single_broken", ["upscale", "{IN}/broken.png", "-o", "{R}/single_broken.png"]),
    ("single_missing", ["upscale", "{IN}/missing.png", "-o", "{R}/single_missing.png"]),
    ("single_jpg", ["upscale", "{IN}/photo.jpg", "-o", "{R}/single_jpg.jpg", "--model", "compact-psnr-x4"]),
    ("badopt", ["upscale", "{IN}/rgb.png", "-o", "{R}/x.png", "--tile", "-3"]),
    ("ray", ["upscale", "{IN}", "-o", "{R}/ray", "-r", "--ray", "local", "--workers", "1", "--report",
             "{R}/ray_report.json"]),
    ("info", ["info", "compact-real-x4", "--json"]),
    ("models", ["models", "list"]),
]


def run(python: str, results: Path) -> None:
    results = results.resolve()
    inputs = results.parent / (results.name + "-inputs")
    make_inputs(inputs)
    results.mkdir(parents=True, exist_ok=True)
    codes = []
    for name, args in COMMANDS:
        argv = [a.replace("{IN}", str(inputs)).replace("{R}", str(results)) for a in args]
        proc = subprocess.run([python, "-m", "esrgan_cli", *argv], capture_output=True, text=True, cwd="/tmp",
                              env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home()),
                                   **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})
        (results / f"{name}.stdout").write_text(proc.stdout)
        (results / f"{name}.stderr").write_text(proc.stderr.replace(str(inputs), "<IN>"))
        codes.append(f"{name} {proc.returncode}")
    (results / "rc.txt").write_text("\n".join(codes) + "\n")


_TIMES = re.compile(r"time|second|mpx_per_s", re.I)
_CHECKOUT = re.compile(r"/\S*?/(?=weights/)")  # where a checkout lies: `esrgan info` prints a bundled file's path


def _normal(value: object, roots: list[str]) -> object:
    """JSON with times blanked, result folders and checkouts named alike, and lists in a fixed order."""
    if isinstance(value, dict):
        return {k: "<t>" if _TIMES.search(k) else _normal(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_normal(v, roots) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, str):
        return _text(value, roots)
    return value


def _text(text: str, roots: list[str]) -> str:
    for root in roots:
        text = text.replace(root, "<R>")
    text = re.sub(r"in \d+(\.\d+)? s \([\d.]+ input Mpx/s\)", "in <t>", text)  # the batch summary
    text = re.sub(r", \d+\.\d s\)$", ", <t> s)", text, flags=re.M)  # a single file's `wrote` line
    return _CHECKOUT.sub("<checkout>/", text)


def compare(a: Path, b: Path) -> int:
    a, b = a.resolve(), b.resolve()
    roots = sorted([str(a), str(b)], key=len, reverse=True)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    others = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    bad = [f"only in one: {sorted(map(str, set(files) ^ set(others)))}"] if files != others else []
    for rel in (r for r in files if (b / r).exists()):
        left, right = a / rel, b / rel
        if rel.suffix == ".jsonl":  # the journal: the same entries, in any order
            entries = [sorted(json.dumps(_normal(json.loads(line), roots), sort_keys=True)
                              for line in p.read_text().splitlines()) for p in (left, right)]
            same = entries[0] == entries[1]
        elif rel.suffix == ".json" or rel.name == "info.stdout":
            same = _normal(json.loads(left.read_text()), roots) == _normal(json.loads(right.read_text()), roots)
        elif rel.suffix in (".stdout", ".stderr", ".txt"):  # lines in any order: a cluster reports as files finish
            same = sorted(_text(left.read_text(), roots).splitlines()) == \
                sorted(_text(right.read_text(), roots).splitlines())
        else:  # outputs: byte for byte
            same = left.read_bytes() == right.read_bytes()
        if not same:
            bad.append(f"differs: {rel}")
    print(f"{len(files)} files compared: " + ("identical (apart from times and paths)" if not bad else "DIFFERENT"))
    print("\n".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        run(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
