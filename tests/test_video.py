"""Video (issue 27): clips made here with PyAV go through `upscale_video` and `esrgan upscale`; the film keeps its
frames, timestamps, audio bytes, subtitles, tags, rotation and depth, and bad inputs are one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import av  # noqa: E402
from test_cli import assert_one_line_error, esrgan  # noqa: E402
from video_clips import frame_times, make_clip, packets, rgb_frames, with_damaged_packet  # noqa: E402

import esrgan_cli  # noqa: E402
from esrgan_cli.errors import VideoEncodeError, VideoReadError  # noqa: E402
from esrgan_cli.upscale.pipeline import UpscaleOptions  # noqa: E402
from esrgan_cli.upscale.upscaler import Upscaler  # noqa: E402
from esrgan_cli.video.codecs import VideoEncoding  # noqa: E402

from conftest import ROOT  # noqa: E402


@pytest.fixture
def upscaler(tiny_weights: Path) -> Iterator[Upscaler]:
    # One torch thread: the tiny model's frames are too small to share, and on a busy 2-core machine two threads
    # waiting on each other beside the decoder and encoder made each frame 8x slower (97 ms against 12 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield esrgan_cli.load_model(tiny_weights, device="cpu")
    finally:
        torch.set_num_threads(threads)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_mp4_keeps_frames_timestamps_audio_bytes_and_tags(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=12)
    dst = tmp_path / "clip_x4.mp4"
    seen = []
    result = esrgan_cli.upscale_video(src, dst, upscaler, progress=seen.append)
    assert (result.frames, result.width, result.height, result.codec, result.pix_fmt) == (12, 128, 96, "h264",
                                                                                       "yuv420p")
    assert frame_times(dst) == frame_times(src) and len(frame_times(src)) == 12
    assert packets(dst, "audio") == packets(src, "audio") and len(packets(src, "audio")) > 10
    with av.open(str(dst)) as c:
        assert c.metadata["title"] == "Test clip"
        assert c.streams.video[0].metadata["language"] == "fra"
        assert c.streams.audio[0].metadata["language"] == "eng"
        first = next(c.decode(video=0))
        assert (first.width, first.height) == (128, 96)
    assert [p.frames for p in seen] == list(range(1, 13)) and seen[-1].total == 12
    assert leftovers(tmp_path) == []


def test_each_output_frame_is_nearest_the_upscale_of_its_own_input_frame(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mkv", frames=10, audio=False)
    dst = tmp_path / "out.mkv"
    esrgan_cli.upscale_video(src, dst, upscaler, encoding=VideoEncoding(crf=10))
    expected = [upscaler.upscale(f).astype(np.float32) for f in rgb_frames(src)]
    got = [f.astype(np.float32) for f in rgb_frames(dst)]
    assert len(got) == len(expected) == 10
    for k, frame in enumerate(got):
        distances = [float(np.abs(frame - e).mean()) for e in expected]
        assert int(np.argmin(distances)) == k, distances
        assert distances[k] < 6, distances  # 4:2:0 and CRF 10 cost a few levels, no more


def test_variable_frame_rate_keeps_every_irregular_timestamp(tmp_path: Path, upscaler: Upscaler) -> None:
    stamps = [0, 71, 129, 179, 215, 253, 275, 299, 319, 349, 417, 475]
    src = make_clip(tmp_path / "vfr.mkv", pts=stamps, audio=False)
    for suffix in (".mp4", ".mkv"):
        dst = tmp_path / f"vfr_x4{suffix}"
        esrgan_cli.upscale_video(src, dst, upscaler)
        assert frame_times(dst) == [Fraction(t, 1000) for t in stamps]


def test_mkv_keeps_subtitles_rotation_language_and_chapters(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "film.mkv", subtitles=True, rotation=90, chapters=True)
    dst = tmp_path / "film_x4.mkv"
    result = esrgan_cli.upscale_video(src, dst, upscaler)
    assert packets(dst, "subtitle") == packets(src, "subtitle") == [b"Hallo Welt", b"Zweite Zeile"]
    assert packets(dst, "audio") == packets(src, "audio")
    with av.open(str(dst)) as c, av.open(str(src)) as s:
        assert next(c.decode(video=0)).rotation == 90
        assert [dict(st.metadata).get("language") for st in c.streams] == ["fra", "eng", "deu"]
        assert c.metadata["title"] == "Test clip"
        assert [(ch["start"], ch["end"], ch["metadata"]) for ch in c.chapters()] == \
            [(ch["start"], ch["end"], ch["metadata"]) for ch in s.chapters()]
    assert not any("dropped" in n for n in result.notes)
    # mp4 has no subrip: the subtitles are dropped with a note; the audio is still copied byte for byte.
    mp4 = tmp_path / "film_x4.mp4"
    result = esrgan_cli.upscale_video(src, mp4, upscaler)
    assert any("subtitle stream 2" in n and "dropped" in n for n in result.notes), result.notes
    assert packets(mp4, "audio") == packets(src, "audio")
    with av.open(str(mp4)) as c:
        assert next(c.decode(video=0)).rotation == 90


def test_webm_reencodes_aac_to_opus_with_a_note(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mp4")
    dst = tmp_path / "clip.webm"
    result = esrgan_cli.upscale_video(src, dst, upscaler)
    assert result.codec == "vp9"
    assert any("re-encoded to libopus" in n for n in result.notes), result.notes
    with av.open(str(dst)) as c:
        assert c.streams.audio[0].codec.name == "opus"
        assert sum(1 for _ in c.decode(audio=0)) > 10
    assert frame_times(dst) == frame_times(src)


def test_ten_bit_source_stays_ten_bit(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "deep.mkv", codec="libx265", pix_fmt="yuv420p10le", audio=False, frames=6)
    dst = tmp_path / "deep_x4.mkv"
    result = esrgan_cli.upscale_video(src, dst, upscaler, encoding=VideoEncoding(codec="hevc"))
    assert result.pix_fmt == "yuv420p10le"
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 6 and frames[0].format.name == "yuv420p10le"
    deep = frames[2].to_ndarray(format="rgb48le")
    assert deep.dtype == np.uint16 and len(np.unique(deep % 64)) > 4  # values between 8-bit steps are used
    assert frame_times(dst) == frame_times(src)


def test_odd_sizes_from_outscale_are_rounded_to_the_chroma_grid(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mkv", frames=3, audio=False)
    dst = tmp_path / "odd.mkv"
    result = esrgan_cli.upscale_video(src, dst, upscaler, options=UpscaleOptions(outscale=1.3))
    assert (result.width, result.height) == (42, 30)  # 41.6×31.2 rounds to 42×31, then down to even sizes
    assert any("steps of 2×2" in n for n in result.notes), result.notes
    with av.open(str(dst)) as c:
        assert {(f.width, f.height) for f in c.decode(video=0)} == {(42, 30)}
    lossless = tmp_path / "odd444.mkv"
    result = esrgan_cli.upscale_video(src, lossless, upscaler, options=UpscaleOptions(outscale=1.3),
                                      encoding=VideoEncoding(codec="ffv1"))
    assert (result.width, result.height, result.pix_fmt) == (42, 31, "yuv444p")


def test_encodings_the_container_or_pyav_cannot_write_are_refused_before_work(tmp_path: Path,
                                                                              upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=2)
    with pytest.raises(VideoEncodeError, match="cannot hold h264"):
        esrgan_cli.upscale_video(src, tmp_path / "x.webm", upscaler, encoding=VideoEncoding(codec="h264"))
    with pytest.raises(VideoEncodeError, match="cannot write --pix-fmt rgb24"):
        esrgan_cli.upscale_video(src, tmp_path / "x.mp4", upscaler, encoding=VideoEncoding(pix_fmt="rgb24"))
    with pytest.raises(VideoEncodeError, match="lossless"):
        esrgan_cli.upscale_video(src, tmp_path / "x.mkv", upscaler, encoding=VideoEncoding(codec="ffv1", crf=3))
    with pytest.raises(VideoEncodeError, match="outside h264's range"):
        esrgan_cli.upscale_video(src, tmp_path / "x.mkv", upscaler, encoding=VideoEncoding(crf=60))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "tiny.safetensors"]


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    good = make_clip(folder / "good.mp4", frames=6)
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the index (moov) is at the end
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n")
    audio_only = folder / "sound.mp4"
    with av.open(str(audio_only), "w") as out:
        s = out.add_stream("aac", rate=48000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*s.encode(frame), *s.encode(None)]:
            out.mux(packet)
    return {"truncated": (truncated, "not a video FFmpeg can read"), "empty": (empty, "empty file"),
            "text": (text, "not a video FFmpeg can read"),
            "audio only": (audio_only, "no video stream (it holds audio")}


def test_bad_inputs_raise_one_line_read_errors(tmp_path: Path, upscaler: Upscaler) -> None:
    for name, (path, fragment) in _bad_inputs(tmp_path).items():
        with pytest.raises(VideoReadError) as e:
            esrgan_cli.upscale_video(path, tmp_path / "out.mp4", upscaler)
        assert fragment in str(e.value) and "\n" not in str(e.value), name
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_command_line_video_and_bad_inputs(tmp_path: Path, tiny_weights: Path) -> None:
    src = make_clip(tmp_path / "clip.mov", frames=4)
    dst = tmp_path / "clip_x4.mkv"
    proc = esrgan("upscale", src, "-o", dst, "--model", tiny_weights, "--device", "cpu", "--crf", "20")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and "4 frames of 128×96, h264 yuv420p" in proc.stderr
    assert frame_times(dst) == frame_times(src) and packets(dst, "audio") == packets(src, "audio")
    for _name, (path, fragment) in _bad_inputs(tmp_path).items():
        assert_one_line_error(esrgan("upscale", path, "-o", tmp_path / "out.mp4", "--model", tiny_weights), 1,
                              fragment, path.name)
    assert_one_line_error(esrgan("upscale", src, "-o", tmp_path / "x.png"), 2, "is a video")
    assert_one_line_error(esrgan("upscale", src, "-o", tmp_path / "x.webm", "--codec", "h264"), 1,
                          ".webm cannot hold h264")
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_without_pyav_a_video_gets_one_line_naming_the_extra(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=2)
    code = ("import sys; sys.modules['av'] = None\n"
            "from esrgan_cli.cli import main\n"
            f"sys.argv = ['esrgan', 'upscale', {str(src)!r}, '-o', {str(tmp_path / 'out.mp4')!r}]\n"
            "main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert_one_line_error(proc, 1, 'pip install ".[video]"')


def test_import_and_help_load_neither_pyav_nor_torch() -> None:
    code = ("import sys, esrgan_cli, esrgan_cli.cli as c\n"
            "assert callable(esrgan_cli.__getattr__) and 'upscale_video' in esrgan_cli.__all__\n"
            "sys.argv = ['esrgan', '--help']\n"
            "try: c.main()\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('av', 'torch', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    helped = esrgan("upscale", "--help")
    assert "--codec [h264|hevc|vp9|av1|ffv1]" in helped.stdout and "this PyAV writes h264" in helped.stdout


def test_a_damaged_frame_is_held_at_its_own_timestamp(tmp_path: Path, upscaler: Upscaler) -> None:
    # Motion JPEG: every packet is a picture of its own, and one that is not JPEG fails to decode (H.264 would
    # conceal the damage instead of reporting it).
    clean = make_clip(tmp_path / "clean.mkv", codec="mjpeg", pix_fmt="yuvj420p", audio=False, frames=8)
    src = with_damaged_packet(clean, tmp_path / "damaged.mkv", 3)
    dst = tmp_path / "out.mkv"
    result = esrgan_cli.upscale_video(src, dst, upscaler, encoding=VideoEncoding(codec="ffv1"))
    assert result.held == 1 and result.frames == 8
    assert any("1 damaged frame replaced by the frame before" in n for n in result.notes), result.notes
    assert frame_times(dst) == frame_times(clean) == [Fraction(40 * i, 1000) for i in range(8)]
    out = rgb_frames(dst)  # ffv1 is lossless: the held frame is the one before, exactly
    assert np.array_equal(out[3], out[2]) and not np.array_equal(out[4], out[3])


def test_progress_gives_the_time_position_when_the_count_is_unknown(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mkv", frames=5, audio=False)  # Matroska does not store a frame count
    seen: list[esrgan_cli.VideoProgress] = []
    esrgan_cli.upscale_video(src, tmp_path / "out.mkv", upscaler, progress=seen.append)
    assert [p.frames for p in seen] == [1, 2, 3, 4, 5] and {p.total for p in seen} == {None}
    assert [p.position for p in seen] == [0.0, 0.04, 0.08, 0.12, 0.16]
    assert seen[-1].duration == pytest.approx(0.2, abs=0.05) and seen[-1].seconds > 0


_PEAK_RSS = """
import sys
import torch
import esrgan_cli
torch.set_num_threads(1)
up = esrgan_cli.load_model(sys.argv[1], device="cpu")
esrgan_cli.upscale_video(sys.argv[2], sys.argv[3], up, options=esrgan_cli.UpscaleOptions(tile=0))
# VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak (pytest's) into a child's ru_maxrss across exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
def test_memory_stays_flat_over_the_length_of_the_film(tmp_path: Path, tiny_weights: Path) -> None:
    """Peak RSS for 1000 frames within 10 % of 100 frames: frames stream through bounded queues."""
    peaks = {}
    for frames in (100, 1000):
        src = make_clip(tmp_path / f"long{frames}.mp4", frames=frames, width=24, height=16)
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(tiny_weights), str(src),
                               str(tmp_path / f"out{frames}.mp4")], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        peaks[frames] = int(proc.stdout.split()[-1])
        assert len(frame_times(tmp_path / f"out{frames}.mp4")) == frames
    assert peaks[1000] <= peaks[100] * 1.10, peaks


def _decoded(path: Path) -> tuple[list[Fraction], list[np.ndarray], list[bytes]]:
    return frame_times(path), rgb_frames(path), packets(path, "audio")


def test_segments_join_into_the_same_film_in_every_container(tmp_path: Path, upscaler: Upscaler) -> None:
    stamps = [0, 71, 129, 179, 215, 253, 275, 299, 319, 349, 417, 475, 480, 600, 601, 700]
    src = make_clip(tmp_path / "vfr.mkv", pts=stamps)
    for suffix in (".mp4", ".mkv", ".mov"):
        whole, split = tmp_path / f"whole{suffix}", tmp_path / f"split{suffix}"
        esrgan_cli.upscale_video(src, whole, upscaler, segment_seconds=100)
        esrgan_cli.upscale_video(src, split, upscaler, segment_seconds=0.1)  # a segment every few frames
        assert frame_times(split) == [Fraction(t, 1000) for t in stamps]
        assert packets(split, "audio") == packets(src, "audio")
        # Another keyframe pattern costs a few levels at these tiny sizes; each frame is still its own picture.
        wholes = [f.astype(np.float32) for f in rgb_frames(whole)]
        for k, frame in enumerate(rgb_frames(split)):
            distances = [float(np.abs(frame - w).mean()) for w in wholes]
            assert int(np.argmin(distances)) == k and distances[k] < 6, (suffix, k, distances)
    assert leftovers(tmp_path) == []


def test_an_interrupted_call_resumes_after_its_last_segment(tmp_path: Path, upscaler: Upscaler) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=30)
    reference = tmp_path / "reference.mkv"
    esrgan_cli.upscale_video(src, reference, upscaler, segment_seconds=0.2, encoding=VideoEncoding(codec="ffv1"))
    dst = tmp_path / "out.mkv"

    def stop_at_frame_17(p: esrgan_cli.VideoProgress) -> None:
        if p.frames == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        esrgan_cli.upscale_video(src, dst, upscaler, segment_seconds=0.2, progress=stop_at_frame_17,
                                 encoding=VideoEncoding(codec="ffv1"))
    assert not dst.exists()
    state = tmp_path / ".out.mkv.esrgan-video"
    assert (state / "journal.jsonl").is_file()
    seen: list[esrgan_cli.VideoProgress] = []
    result = esrgan_cli.upscale_video(src, dst, upscaler, segment_seconds=0.2, progress=seen.append,
                                      encoding=VideoEncoding(codec="ffv1"))
    kept = seen[0].frames - 1
    assert kept in (5, 10, 15) and any(f"resumed after {kept} frames" in n for n in result.notes), result.notes
    assert result.frames == 30
    expected, got = _decoded(reference), _decoded(dst)
    assert got[0] == expected[0] and got[2] == expected[2]
    assert all(np.array_equal(a, b) for a, b in zip(got[1], expected[1], strict=True))  # ffv1: exact
    assert leftovers(tmp_path) == []
    # Another model's leftovers are not reused: a changed option starts afresh.
    with pytest.raises(KeyboardInterrupt):
        esrgan_cli.upscale_video(src, dst, upscaler, segment_seconds=0.2, progress=stop_at_frame_17)
    result = esrgan_cli.upscale_video(src, dst, upscaler, segment_seconds=0.2, options=UpscaleOptions(overlap=8))
    assert not any("resumed" in n for n in result.notes) and leftovers(tmp_path) == []


def test_segments_of_another_strength_are_not_reused(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=12)
    dst = tmp_path / "out.mkv"

    def stop_at_frame_8(p: esrgan_cli.VideoProgress) -> None:
        if p.frames == 8:
            raise KeyboardInterrupt

    crisp = esrgan_cli.load_model("compact-x4", "cpu", "fp32", strength=1.0)
    with pytest.raises(KeyboardInterrupt):
        esrgan_cli.upscale_video(src, dst, crisp, segment_seconds=0.2, progress=stop_at_frame_8)
    clean = esrgan_cli.load_model("compact-x4", "cpu", "fp32", strength=0.0)
    result = esrgan_cli.upscale_video(src, dst, clean, segment_seconds=0.2)
    assert not any("resumed" in n for n in result.notes) and leftovers(tmp_path) == []


def test_sigint_at_a_random_frame_then_the_same_command_equals_an_uninterrupted_run(tmp_path: Path,
                                                                                    tiny_weights: Path) -> None:
    import os
    import random
    import signal
    import time

    from conftest import default_sigint, wait_until

    src = make_clip(tmp_path / "long.mp4", frames=300, width=24, height=16)  # 12 s: six 2-second segments
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["--model", str(tiny_weights), "--device", "cpu", "--codec", "ffv1", "-q"]
    whole = tmp_path / "whole.mkv"
    done = subprocess.run([sys.executable, "-m", "esrgan_cli", "upscale", str(src), "-o", str(whole), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    dst = tmp_path / "out.mkv"
    command = [sys.executable, "-m", "esrgan_cli", "upscale", str(src), "-o", str(dst), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            preexec_fn=default_sigint)
    journal = tmp_path / ".out.mkv.esrgan-video" / "journal.jsonl"
    wait_until(lambda: journal.is_file() and len(journal.read_text().splitlines()) >= 2, proc,
               "the first segment to be journaled")
    time.sleep(random.uniform(0, 0.8))  # somewhere in the next segment
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not dst.exists()
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert again.returncode == 0, again.stderr
    expected, got = _decoded(whole), _decoded(dst)
    assert got[0] == expected[0] and len(got[0]) == 300 and got[2] == expected[2]
    assert all(np.array_equal(a, b) for a, b in zip(got[1], expected[1], strict=True))
    assert leftovers(tmp_path) == []
