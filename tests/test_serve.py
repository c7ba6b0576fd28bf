"""`esrgan serve` over HTTP (a real uvicorn on 127.0.0.1): downloads equal `esrgan upscale`'s bytes, bad input is one
line and leaves nothing behind, the safety rules hold, jobs run one at a time, and the command starts fast."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esrgan_cli.model.weights import save_safetensors

from conftest import ROOT, tiny_model
from serve_helpers import (
    ServeConfig,
    call,
    cli_output,
    gray16_png,
    jpeg_with_metadata,
    rgba_png,
    running,
    wait_done,
)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for seed, name in ((0, "tiny.safetensors"), (5, "other.safetensors")):
        model = tiny_model(seed=seed)
        save_safetensors(model.state_dict(), model.config, folder / name)
    return folder


def upload(base: str, path: Path, name: str | None = None) -> tuple[int, dict]:
    return call(f"{base}/api/files?name={name or path.name}", path.read_bytes(), "POST")


def leftover_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# What the page sends, and the `esrgan upscale` options that mean the same.
CASES = [
    ("rgba.png", {"scale": "2"}, ["--outscale", "2"]),
    ("photo.jpg", {"scale": "4", "quality": 80}, ["--quality", "80"]),
    ("gray16.png", {"scale": "width", "width": 25, "format": "tiff", "tile": "16"}, ["--outscale", str(25 / 10),
                                                                                     "--tile", "16"]),
    ("rgba.png", {"scale": "3", "format": "webp", "alpha": "model"}, ["--outscale", "3", "--alpha", "model"]),
]


def test_downloads_are_the_bytes_esrgan_upscale_writes(tmp_path: Path, models_dir: Path) -> None:
    inputs = {"rgba.png": rgba_png(tmp_path / "rgba.png"), "photo.jpg": jpeg_with_metadata(tmp_path / "photo.jpg"),
              "gray16.png": gray16_png(tmp_path / "gray16.png")}
    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (base, service):
        status, settings = call(f"{base}/api/settings")
        assert status == 200
        names = [m["name"] for m in settings["models"]]
        assert "tiny.safetensors" in names and "compact-real-x4" in names
        assert any(m["bundled"] and "bundled" in m["label"] for m in settings["models"])
        uploads = {}
        for name, path in inputs.items():
            status, up = upload(base, path)
            assert status == 200, up
            uploads[name] = up
        assert (uploads["photo.jpg"]["width"], uploads["photo.jpg"]["height"]) == (20, 16)  # as stored, unturned
        jobs = []
        for name, asked, _ in CASES:
            status, job = call(f"{base}/api/jobs", {"file": uploads[name]["id"], "model": "tiny.safetensors", **asked},
                               "POST")
            assert status == 200 and job["state"] in ("queued", "running", "done"), job
            jobs.append(job)
        finished = [wait_done(base, j["id"]) for j in jobs]
        for (name, _, args), job in zip(CASES, finished, strict=True):
            assert job["state"] == "done", job
            status, got = call(f"{base}/api/jobs/{job['id']}/output")
            assert status == 200
            want = cli_output(inputs[name], tmp_path / f"cli-{job['output']}", "--model",
                              models_dir / "tiny.safetensors", "--device", "cpu", *args)
            assert got == want, (name, args)
        assert [j["output"] for j in finished] == ["rgba_x2.png", "photo_x4.jpg", "gray16_w25.tiff", "rgba_x3.webp"]
        written = Image.open(io.BytesIO(call(f"{base}/api/jobs/{finished[1]['id']}/output")[1]))
        assert written.size == (64, 80) and written.getexif().get(0x010E) == "esrgan serve test"  # turned, EXIF kept
        assert written.info.get("icc_profile")
        sixteen = Image.open(io.BytesIO(call(f"{base}/api/jobs/{finished[2]['id']}/output")[1]))
        assert sixteen.mode == "I;16" and sixteen.size == (25, 30)
        status, shown = call(f"{base}/api/jobs/{finished[2]['id']}/view")  # a TIFF, shown to the slider as a PNG
        assert status == 200 and Image.open(io.BytesIO(shown)).format == "PNG"
        status, archive = call(f"{base}/api/zip?jobs={','.join(j['id'] for j in finished)}")
        assert status == 200
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            assert sorted(z.namelist()) == sorted(j["output"] for j in finished)
            assert z.read("rgba_x2.png") == call(f"{base}/api/jobs/{finished[0]['id']}/output")[1]
        folder = service.folder
        assert not [p for p in folder.iterdir() if p.suffix == ".zip"]  # the zip was removed once sent
    assert not folder.exists()  # stopping removes every upload and output


def test_preview_runs_one_crop_of_each_model(tmp_path: Path, models_dir: Path) -> None:
    import esrgan_cli

    src = rgba_png(tmp_path / "rgba.png", h=40, w=36)
    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (base, _):
        up = upload(base, src)[1]
        crops = {}
        for model in ("tiny.safetensors", "other.safetensors"):
            status, crop = call(f"{base}/api/preview", {"file": up["id"], "model": model, "x": 30, "y": 5,
                                                        "size": 16}, "POST")
            assert status == 200, crop
            crops[model] = crop
    assert crops["tiny.safetensors"]["box"] == "20,0,16"  # centred on (30, 5), moved inside the image
    after = Image.open(io.BytesIO(base64.b64decode(crops["tiny.safetensors"]["after"].split(",", 1)[1])))
    upscaler = esrgan_cli.load_model(models_dir / "tiny.safetensors", device="cpu")
    want = upscaler.upscale(Image.open(src).crop((20, 0, 36, 16)))
    assert after.size == (64, 64) and np.array_equal(np.asarray(after), np.asarray(want))
    assert crops["tiny.safetensors"]["after"] != crops["other.safetensors"]["after"]  # A and B differ


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, models_dir: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    big = rgba_png(tmp_path / "big.png", h=60, w=60)
    wide = rgba_png(tmp_path / "wide.png", h=8, w=40)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(rgba_png(tmp_path / "whole.png", h=10, w=12).read_bytes()[:200])
    config = ServeConfig(models_dir=models_dir, device="cpu", max_upload_bytes=4000, max_output_pixels=8 * 40 * 16)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((models_dir / "tiny.safetensors").read_bytes())
    with running(config) as (base, service):
        refusals = [
            (upload(base, text), 400, "notes.png: not an image"),
            (upload(base, big), 413, "big.png: larger than the upload limit of 0.004 MB"),
            (upload(base, wide, "a/../../wide.png"), 200, ""),
        ]
        ok = refusals.pop()[0][1]
        tall = rgba_png(tmp_path / "tall.png", h=12, w=40)
        refusals.append((upload(base, tall), 400, "tall.png: 40×12 would upscale to 7,680 pixels, over the limit "
                                                  "of 5,120; raise it with esrgan serve --max-output-pixels"))
        for model, fragment in (("../outside.safetensors", "not a path"), (str(outside), "not a path"),
                                ("/etc/passwd", "not a path"), ("hf:owner/repo/x.pth", "not a path"),
                                ("no-such-model", "no model named 'no-such-model' (known: compact-real-x4")):
            refusals.append((call(f"{base}/api/jobs", {"file": ok["id"], "model": model}, "POST"), 400, fragment))
            refusals.append((call(f"{base}/api/preview", {"file": ok["id"], "model": model}, "POST"), 400, fragment))
        refusals.append((call(f"{base}/api/jobs", {"file": ok["id"], "model": "tiny.safetensors", "tile": "3"},
                              "POST"), 400, "tile 3: use auto, 0"))
        refusals.append((call(f"{base}/api/jobs", {"file": "nope", "model": "tiny.safetensors"}, "POST"), 400,
                         "no longer on the server"))
        refusals.append((call(f"{base}/api/jobs", b"{", "POST"), 400, "not JSON"))
        for (status, body), code, fragment in refusals:
            assert status == code and list(body) == ["error"], body
            assert fragment in body["error"] and "\n" not in body["error"], body
            assert str(service.folder) not in body["error"], body  # never a path on the server
        assert ok["name"] == "wide.png"  # the browser's folders are no part of the name
        # A file whose header passes but whose pixels are cut short fails when it runs: one line, no output.
        status, cut = upload(base, truncated)
        assert status == 200, cut
        job = call(f"{base}/api/jobs", {"file": cut["id"], "model": "tiny.safetensors"}, "POST")[1]
        failed = wait_done(base, job["id"])
        assert failed["state"] == "failed" and failed["error"].startswith("cut.png: "), failed
        assert "\n" not in failed["error"] and str(service.folder) not in failed["error"]
        # The server goes on serving, and holds only the two files it accepted.
        again = call(f"{base}/api/jobs", {"file": ok["id"], "model": "tiny.safetensors"}, "POST")[1]
        good = wait_done(base, again["id"])
        assert good["state"] == "done", good
        assert leftover_files(service.folder) == sorted(
            [f"upload-{ok['id']}", f"upload-{cut['id']}", f"job-{good['id']}", f"job-{good['id']}/wide_x4.png"])
        call(f"{base}/api/files/{cut['id']}", method="DELETE")
        call(f"{base}/api/jobs/{good['id']}", method="DELETE")
        assert leftover_files(service.folder) == [f"upload-{ok['id']}"]


def test_safe_by_default(tmp_path: Path) -> None:
    with running(ServeConfig(device="cpu")) as (base, _):
        status, page = call(base + "/")
        assert status == 200
        html = page.decode()
        # No outside request: nothing is loaded from another address, and the policy allows only this server.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
        assert "http://" not in html and "https://" not in html
        request = __import__("urllib.request").request
        with request.urlopen(base + "/") as r:
            policy = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        # Another site's page cannot post (no X-Esrgan header without a preflight), nor reach it by a DNS name.
        status, body = call(f"{base}/api/jobs", {"file": "x", "model": "compact-x4"}, "POST", headers={"X-Esrgan": "0"})
        assert status == 403 and "X-Esrgan" in body["error"]
        status, body = call(f"{base}/api/settings", headers={"Host": "evil.example:80"})
        assert status == 403 and "only to 127.0.0.1 and localhost" in body["error"]
        assert call(f"{base}/api/settings", headers={"Host": "localhost:1"})[0] == 200


def test_jobs_run_one_at_a_time_in_order(tmp_path: Path, models_dir: Path) -> None:
    """Two clients at once: the second waits in the queue for the first; both finish with the right bytes."""
    src = [rgba_png(tmp_path / f"in{i}.png", h=24, w=24, seed=i) for i in range(2)]
    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (base, service):
        spans: list[tuple[str, float, float]] = []
        original = service._run_job

        def timed(job):  # type: ignore[no-untyped-def]
            start = time.monotonic()
            original(job)
            spans.append((job.upload.name, start, time.monotonic()))

        service._run_job = timed  # type: ignore[method-assign]
        results: dict[int, dict] = {}

        def client(i: int) -> None:
            up = upload(base, src[i])[1]
            job = call(f"{base}/api/jobs", {"file": up["id"], "model": "tiny.safetensors", "tile": "16"}, "POST")[1]
            results[i] = wait_done(base, job["id"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            assert results[i]["state"] == "done"
            got = call(f"{base}/api/jobs/{results[i]['id']}/output")[1]
            assert got == cli_output(src[i], tmp_path / f"cli{i}.png", "--model", models_dir / "tiny.safetensors",
                                     "--device", "cpu", "--tile", "16")
    (_, _, first_end), (_, second_start, _) = sorted(spans, key=lambda s: s[1])
    assert len(spans) == 2 and second_start >= first_end


def test_progress_and_time_left_of_a_running_job(tmp_path: Path, models_dir: Path) -> None:
    from esrgan_cli.serve.options import job_settings
    from esrgan_cli.serve.service import Job, Upload, status

    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (_, service):
        upload = Upload("u", "a.png", tmp_path / "a.png", 10, 10, 1)
        job = Job("j", upload, job_settings({"model": "tiny.safetensors"}, models_dir), "a_x4.png", state="running",
                  done=25, total=100, started=time.monotonic() - 2.0)
        shown = status(service, job)
    assert shown["progress"] == 0.25 and shown["state"] == "running"
    assert 5.9 <= shown["eta"] <= 7.0  # 2 s for a quarter: about 6 s for the rest


def test_open_starts_the_browser_on_the_url(tmp_path: Path) -> None:
    marker = tmp_path / "opened"
    browser = f"{sys.executable} -c \"import sys; open(sys.argv[2], 'w').write(sys.argv[1])\" %s {marker}"
    proc = subprocess.Popen([sys.executable, "-m", "esrgan_cli", "serve", "--port", "0", "--open"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "BROWSER": browser})
    try:
        assert proc.stderr is not None
        url = re.search(r"http://\S+/", proc.stderr.readline())
        assert url
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline, "no browser was started"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert marker.read_text() == url[0]


def test_ctrl_c_stops_and_removes_every_upload_and_output(tmp_path: Path, models_dir: Path) -> None:
    import signal

    from conftest import default_sigint

    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "esrgan_cli", "serve", "--port", "0", "--models-dir", models_dir],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=default_sigint,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(temp)})
    try:
        assert proc.stderr is not None
        url = re.search(r"http://\S+/", proc.stderr.readline())
        assert url
        base = url[0].rstrip("/")
        up = upload(base, rgba_png(tmp_path / "a.png"))[1]
        asked = call(f"{base}/api/jobs", {"file": up["id"], "model": "tiny.safetensors"}, "POST")[1]
        assert wait_done(base, asked["id"])["state"] == "done"
        assert len(leftover_files(temp)) == 4  # the folder, the upload, the job's folder and its output
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and rest.strip() == "esrgan: interrupted", rest  # as every command's Ctrl-C
    assert leftover_files(temp) == []


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "esrgan_cli", "serve", *args], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_serve_starts_in_under_3_seconds_and_prints_its_url() -> None:
    import urllib.request

    start = time.monotonic()
    proc = _serve("--port", "0")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.fullmatch(r"esrgan: serving on (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)\n", line)
        assert match, line
        with urllib.request.urlopen(match[1], timeout=10) as r:
            assert r.status == 200 and b"<title>esrgan</title>" in r.read()
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert elapsed < 3.0, f"the page answered {elapsed:.2f} s after the command started"


def test_another_address_needs_host_and_warns() -> None:
    proc = _serve("--host", "0.0.0.0", "--port", "0")
    try:
        assert proc.stderr is not None
        warning, serving = proc.stderr.readline(), proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert warning.startswith("esrgan: warning: listening on 0.0.0.0: anyone who can reach this machine"), warning
    assert serving.startswith("esrgan: serving on http://127.0.0.1:"), serving


def test_without_the_web_extra_one_line_names_the_install() -> None:
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "sys.argv = ['esrgan', 'serve']\nfrom esrgan_cli.cli import main\nmain()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr == ('esrgan: error: esrgan serve needs the web extra: pip install ".[web]" in the esrgan '
                           "checkout\n")


def test_help_and_import_load_no_web_framework() -> None:
    code = ("import sys, esrgan_cli, esrgan_cli.cli as c; sys.argv = ['esrgan', '--help']\n"
            "try: c.main()\nexcept SystemExit: pass\n"
            "assert not {'starlette', 'uvicorn', 'torch'} & set(sys.modules), 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout
