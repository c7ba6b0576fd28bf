"""For the `esrgan serve` tests: a server on 127.0.0.1 in a thread, small images of several kinds, and what
`esrgan upscale` writes for the same file and options (the bytes the page's downloads must equal)."""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import random_image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from esrgan_cli.serve.server import serving_in_thread  # noqa: E402
from esrgan_cli.serve.service import ServeConfig, Service  # noqa: E402


@contextmanager
def running(config: ServeConfig) -> Iterator[tuple[str, Service]]:
    """The app on a free port of 127.0.0.1, served by uvicorn on a thread, as `esrgan serve` runs it."""
    with serving_in_thread(config) as served:
        yield served


def call(url: str, data: bytes | dict[str, Any] | None = None, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON or bytes) of one request, as the page sends it (with the X-Esrgan header)."""
    body = json.dumps(data).encode() if isinstance(data, dict) else data
    h = {"X-Esrgan": "1", **({"Content-Type": "application/json"} if isinstance(data, dict) else {}), **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw


def wait_done(base: str, job_id: str, limit_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        status, job = call(f"{base}/api/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def rgba_png(path: Path, h: int = 18, w: int = 14, seed: int = 1) -> Path:
    rgb = (random_image(h, w, seed) * 255).astype(np.uint8)
    alpha = np.linspace(0, 255, h * w, dtype=np.float64).reshape(h, w).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path


def jpeg_with_metadata(path: Path, h: int = 16, w: int = 20, seed: int = 2) -> Path:
    """An RGB JPEG with an sRGB ICC profile and EXIF (orientation 6, turned on reading) for the metadata rules."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "esrgan serve test"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray((random_image(h, w, seed) * 255).astype(np.uint8)).save(path, quality=90, exif=exif.tobytes(),
                                                                            icc_profile=icc)
    return path


def gray16_png(path: Path, h: int = 12, w: int = 10) -> Path:
    values = (random_image(h, w, 3)[..., 0] * 65535).astype(np.uint16)
    Image.fromarray(values).save(path)
    return path


def cli_output(src: Path, dst: Path, *args: str | Path) -> bytes:
    """What `esrgan upscale SRC -o DST ARGS` writes, run as the command line runs (in this process)."""
    from esrgan_cli.cli import main

    argv, sys.argv = sys.argv, ["esrgan", "upscale", str(src), "-o", str(dst), "-q", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        assert e.code == 0, f"esrgan upscale exited {e.code}"
    finally:
        sys.argv = argv
    return dst.read_bytes()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
