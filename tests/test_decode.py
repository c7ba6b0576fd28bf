"""Whatever a decoder does (raise anything, warn, print from C), esrgan says one line about that file and goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from test_cli import assert_one_line_error, esrgan

from esrgan_cli.errors import ImageReadError
from esrgan_cli.image.capture import decoder_messages
from esrgan_cli.image.decode import read_image

from conftest import WAIT_S, random_image


def save_png(path: Path, h: int = 10, w: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((random_image(h, w, seed) * 255).astype(np.uint8)).save(path)
    return path


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str | Path,
            env: dict[str, str] | None = None) -> tuple[int, str]:
    """`esrgan ARGS` in this process (so monkeypatched decoders apply): the exit code and stderr."""
    from esrgan_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["esrgan", *map(str, args)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ESRGAN_DEBUG", raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def broken_load(exc: BaseException, when: Callable[[str], bool]) -> Callable[..., object]:
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        if when(str(getattr(self, "filename", ""))):
            raise exc
        return original(self)

    return load


ERRORS = [NotImplementedError("pixel format DXT10/BC6H not implemented"), RuntimeError("decoder exploded"),
          MemoryError(), KeyError("tag"), TypeError("unsupported operand"), RecursionError("too deep")]


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
def test_any_decoder_exception_is_one_read_error(exc: BaseException, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    src = save_png(tmp_path / "bad.png")
    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load(exc, lambda name: True))
    with pytest.raises(ImageReadError) as info:
        read_image(src)
    message = str(info.value)
    assert str(src) in message and "\n" not in message
    assert info.value.__cause__ is exc  # kept for --debug


@pytest.mark.parametrize("exc", ERRORS[:3], ids=lambda e: type(e).__name__)
def test_a_raising_decoder_is_one_line_and_the_batch_goes_on(exc: BaseException, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              tiny_weights: Path, tmp_path: Path) -> None:
    good = [save_png(tmp_path / "in" / f"good{i}.png", seed=i) for i in range(3)]
    bad = save_png(tmp_path / "in" / "bad.png")
    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load(exc, lambda name: "bad" in name))
    code, err = run_cli(monkeypatch, capsys, "upscale", bad, "-o", tmp_path / "one.png", "--model", tiny_weights)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"esrgan: error: {bad}: ")
    code, err = run_cli(monkeypatch, capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out",
                        "--model", tiny_weights, "-q")
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if "failed:" in line] == [line for line in err.splitlines()
                                                                       if str(bad) in line]
    assert len([line for line in err.splitlines() if "failed:" in line]) == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(p.name for p in good)


def test_debug_shows_the_decoders_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tiny_weights: Path, tmp_path: Path) -> None:
    src = save_png(tmp_path / "bad.png")
    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load(RuntimeError("deep inside"), lambda n: True))
    for args, env in ((["--debug"], None), ([], {"ESRGAN_DEBUG": "1"})):
        code, err = run_cli(monkeypatch, capsys, *args, "upscale", src, "-o", tmp_path / "o.png",
                            "--model", tiny_weights, env=env)
        assert code == 1 and "Traceback" in err and "RuntimeError: deep inside" in err
        assert err.strip().splitlines()[-1].startswith("esrgan: error: ")


def test_warnings_and_c_library_output_become_one_note(monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str],
                                                       tiny_weights: Path, tmp_path: Path) -> None:
    """Fd-level capture (capfd): anything a decoder printed raw would show up in `err`."""
    capsys = capfd
    src = save_png(tmp_path / "in.png")
    original = ImageFile.ImageFile.load

    def chatty(self: ImageFile.ImageFile) -> object:
        for i in range(50):
            warnings.warn(f"Corrupt EXIF data. Expecting to read {i} bytes but only got 2.", UserWarning,
                          stacklevel=1)
        os.write(2, b"Fax4Decode: Bad code word at line 0 of strip 0 (x 0).\nTIFFReadDirectory: warning\n")
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", chatty)
    image = read_image(src)
    assert len(image.notes) == 1 and "Corrupt EXIF" in image.notes[0] and "(and 51 more)" in image.notes[0]
    assert "Fax4Decode" not in capfd.readouterr().err  # captured, not printed raw
    code, err = run_cli(monkeypatch, capsys, "upscale", src, "-o", tmp_path / "o.png", "--model", tiny_weights)
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 2, err
    assert lines[0].startswith(f"esrgan: note: {src}: the decoder warned: Corrupt EXIF") and "wrote" in lines[1]
    code, err = run_cli(monkeypatch, capsys, "upscale", src, "-o", tmp_path / "o.png", "--model", tiny_weights,
                        "-q")
    assert code == 0 and err == ""
    save_png(tmp_path / "in2.png", seed=3)
    code, err = run_cli(monkeypatch, capsys, "upscale", src, tmp_path / "in2.png", "-o", tmp_path / "out",
                        "--model", tiny_weights)
    notes = [line for line in err.splitlines() if line.startswith("esrgan: note:")]
    assert code == 0 and len(notes) == 2 and all(not line.strip() or line.startswith("esrgan: ")
                                                 for line in err.splitlines()), err


def test_fd_capture_is_safe_across_threads() -> None:
    """Concurrent captures each get exactly their own C-level output: the fd-2 redirection is serialised."""
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        for _ in range(20):
            with decoder_messages() as said:
                os.write(2, f"thread {i} says hello\n".encode())
            results.setdefault(i, []).extend(said)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: set(said) for i, said in results.items()} == {i: {f"thread {i} says hello"} for i in range(4)}
    assert all(len(said) == 20 for said in results.values())


def test_real_libtiff_output_is_captured_into_the_error_line(tiny_weights: Path, tmp_path: Path) -> None:
    """libtiff prints 'Fax4Decode: Bad code word' from C; it becomes part of the one error line (a real process)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.random((64, 64)) > 0.5).convert("1").save(tmp_path / "g4.tif", compression="group4")
    with Image.open(tmp_path / "g4.tif") as im:
        offset, count = im.tag_v2[273][0], im.tag_v2[279][0]
    data = bytearray((tmp_path / "g4.tif").read_bytes())
    data[offset:offset + count] = bytes(0xFF if i % 2 else 0 for i in range(count))
    (tmp_path / "bad.tif").write_bytes(data)
    for quiet in ([], ["-q"]):
        proc = esrgan("upscale", tmp_path / "bad.tif", "-o", tmp_path / "o.png", "--model", tiny_weights, *quiet)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("esrgan: error: ") and "Fax4Decode" in proc.stderr


def _with_tiff_tag(src: Path, dst: Path, tag: int, value: int) -> Path:
    """A copy of the little-endian TIFF `src` with the SHORT tag `tag` of its first IFD set to `value`."""
    data = bytearray(src.read_bytes())
    assert data[:4] == b"II*\x00"
    ifd = int.from_bytes(data[4:8], "little")
    for i in range(int.from_bytes(data[ifd:ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        if int.from_bytes(data[entry:entry + 2], "little") == tag:
            data[entry + 8:entry + 10] = value.to_bytes(2, "little")
            dst.write_bytes(data)
            return dst
    raise AssertionError(f"no tag {tag} in {src}")


def test_pillow_log_records_become_part_of_the_one_line(tiny_weights: Path, tmp_path: Path) -> None:
    """A TIFF claiming 65535 samples per pixel (as Pillow's libtiff_segfault.tif does): Pillow logs "More samples
    per pixel than can be decoded" through `logging`, which Python printed on stderr above the error line. It is
    now part of that one line, in a single run and in a batch (real processes)."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.tif")
    bad = _with_tiff_tag(tmp_path / "ok.tif", tmp_path / "spp.tif", 277, 65535)  # SamplesPerPixel
    proc = esrgan("upscale", bad, "-o", tmp_path / "o.png", "--model", tiny_weights)
    assert_one_line_error(proc, 1, "More samples per pixel than can be decoded: 65535", str(bad))
    (tmp_path / "ok.tif").unlink()
    proc = esrgan("upscale", tmp_path, "-o", tmp_path / "out", "--model", tiny_weights)
    failed = [line for line in proc.stderr.splitlines() if line.startswith("esrgan: failed:")]
    assert proc.returncode == 1 and len(failed) == 1 and "More samples per pixel" in failed[0], proc.stderr
    assert all(line.startswith("esrgan: ") for line in proc.stderr.splitlines() if line.strip()), proc.stderr


_PEAK_LAUNCHER = r"""
import atexit, os, resource, sys
def peak():
    open(os.environ["PEAK_FILE"], "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(peak)
from esrgan_cli.cli import main
main()
"""


def _peak_kib(tmp_path: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run esrgan in a real process; its exit and its peak resident memory (KiB, Linux's ru_maxrss)."""
    peak = tmp_path / "peak.txt"
    proc = subprocess.run([sys.executable, "-c", _PEAK_LAUNCHER, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PEAK_FILE": str(peak), "HF_HUB_OFFLINE": "1"}, timeout=WAIT_S)
    return proc, int(peak.read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_an_oversized_image_is_refused_from_its_header(tiny_weights: Path, tmp_path: Path) -> None:
    """A 9000×9000 PNG of a few hundred kB expands to 243 MB of pixels (and 972 MB as float planes): it used to be
    decoded in full (2.6 GB, 12 s) before the output limit refused it. The header says enough: the refusal now
    costs no more memory than upscaling a tiny image does (each run's peak includes torch and the model)."""
    big = tmp_path / "big.png"
    Image.new("RGB", (9000, 9000), (10, 20, 30)).save(big, optimize=True)
    assert big.stat().st_size < 1_000_000
    small = save_png(tmp_path / "small.png", 16, 16)
    ok, baseline = _peak_kib(tmp_path, "upscale", small, "-o", tmp_path / "small_x4.png", "--model", tiny_weights)
    assert ok.returncode == 0, ok.stderr
    refused, peak = _peak_kib(tmp_path, "upscale", big, "-o", tmp_path / "o.png", "--model", tiny_weights)
    assert_one_line_error(refused, 1, f"{big}: 9000×9000 would upscale to 1,296,000,000 pixels",
                          "--max-output-pixels")
    assert peak - baseline < 200 * 1024, (peak, baseline)
    assert not (tmp_path / "o.png").exists()


def test_every_frame_counts_in_the_header_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An animation's frames are counted from its header: ten 64×64 frames at ×4 are 655,360 output pixels, over a
    limit of 300,000 that one frame fits; no pixel is decoded to find that out."""
    from esrgan_cli.upscale.pipeline import UpscaleOptions, header_check

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(10)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)

    def no_decoding(self: ImageFile.ImageFile) -> object:
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    check = header_check(4, UpscaleOptions(max_output_pixels=300_000))
    for name in ("anim.png", "anim.gif"):
        with pytest.raises(ImageReadError, match=r"anim\.\w+: 10 frames would upscale to 655,360 pixels.*"
                                                 r"--first-frame"):
            read_image(tmp_path / name, all_frames=True, check=check)
    monkeypatch.undo()
    # One frame fits: with only the first frame wanted, the same file is read.
    assert read_image(tmp_path / "anim.png", all_frames=False, check=check).width == 64
