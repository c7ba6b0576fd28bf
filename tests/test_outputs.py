"""What esrgan creates on disk: file modes that honour the umask, a full disk, and two batches in one folder."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import esrgan

from conftest import random_image


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def save_png(path: Path, h: int = 10, w: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((random_image(h, w, seed) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640)])
def test_every_created_file_honours_the_umask(mask: int, expected: int, tiny_weights: Path, tmp_path: Path) -> None:
    a, b = save_png(tmp_path / "in" / "a.png"), save_png(tmp_path / "in" / "b.png", seed=1)
    old = os.umask(mask)
    try:
        single = esrgan("upscale", a, "-o", tmp_path / "single.png", "--model", tiny_weights, "-q")
        batch = esrgan("upscale", a, b, "-o", tmp_path / "out", "--model", tiny_weights, "-q",
                       "--report", tmp_path / "report.json")
        converted = esrgan("convert", tiny_weights, "-o", tmp_path / "converted.safetensors")
    finally:
        os.umask(old)
    for proc in (single, batch, converted):
        assert proc.returncode == 0, proc.stderr
    created = [tmp_path / "single.png", tmp_path / "out" / "a.png", tmp_path / "out" / "b.png",
               tmp_path / "report.json", tmp_path / "out" / ".esrgan-journal.jsonl",
               tmp_path / "converted.safetensors"]
    assert {p.name: oct(mode_of(p)) for p in created} == {p.name: oct(expected) for p in created}


def test_atomic_write_gives_the_umask_mode_in_process(umask_022: None, tmp_path: Path) -> None:
    from esrgan_cli.atomic import atomic_write

    with atomic_write(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"data")
    assert mode_of(tmp_path / "x.bin") == 0o644
