"""`esrgan serve` in a real browser: headless Chromium from the system's packages (Debian's `chromium`), driven by
Playwright, against a server this test starts on 127.0.0.1. Skips when Playwright or a chromium is missing."""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esrgan_cli.model.weights import save_safetensors

from conftest import tiny_model
from serve_helpers import ServeConfig, cli_output, jpeg_with_metadata, rgba_png, running

sync_api = pytest.importorskip("playwright.sync_api")


def chromium_path() -> str | None:
    for name in (os.environ.get("ESRGAN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    model = tiny_model()
    save_safetensors(model.state_dict(), model.config, folder / "tiny.safetensors")
    return folder


def drop(page: Any, *files: Path, names: tuple[str, ...] = ()) -> None:
    """Drop files on the page's drop zone, as a drag from the desktop does (a DataTransfer with File objects)."""
    payload = [{"name": names[i] if i < len(names) else f.name, "b64": base64.b64encode(f.read_bytes()).decode()}
               for i, f in enumerate(files)]
    transfer = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name));
        }
        return dt;
    }""", payload)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def open_page(browser: Any, base: str, model: str = "tiny.safetensors") -> Any:
    page = browser.new_page(accept_downloads=True, viewport={"width": 1200, "height": 900})
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "blob:", "data:")) else None)
    page.outside_requests = outside  # type: ignore[attr-defined]
    page.goto(base + "/")
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.select_option("#model", model)
    return page


def row(page: Any, name: str) -> Any:
    return page.locator("#list tr", has_text=name)


def test_drop_upscale_slide_download(browser: Any, tmp_path: Path, models_dir: Path) -> None:
    rgba = rgba_png(tmp_path / "rgba.png", h=30, w=26)
    photo = jpeg_with_metadata(tmp_path / "photo.jpg")
    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (base, _):
        page = open_page(browser, base)
        page.select_option("#scale", "2")
        drop(page, rgba, photo)
        for name, dims in (("rgba.png", "26×30"), ("photo.jpg", "20×16")):
            row(page, name).locator("text=ready").wait_for()
            assert row(page, name).locator(".dims").inner_text() == dims
        page.click("#run")
        for name in ("rgba.png", "photo.jpg"):
            row(page, name).locator("a.download").wait_for(timeout=120_000)
        # The before/after slider on the selected image (the first), at 100 %, then zoomed and panned.
        page.click("#list tr:first-child td.name")
        page.wait_for_function("() => document.getElementById('right').naturalWidth === 52 && "
                               "!document.getElementById('right').hidden")
        page.locator("#slider").fill("20")
        assert page.eval_on_selector("#right", "e => e.style.clipPath") == "inset(0px 0px 0px 20%)"
        assert page.eval_on_selector("#divider", "e => e.style.left") == "20%"
        page.click("[data-zoom='4']")
        before = page.eval_on_selector("#canvas", "e => e.style.transform")
        assert "scale(4)" in before
        box = page.locator("#stage").bounding_box()
        page.mouse.move(box["x"] + 200, box["y"] + 200)
        page.mouse.down()
        page.mouse.move(box["x"] + 260, box["y"] + 230, steps=3)
        page.mouse.up()
        assert page.eval_on_selector("#canvas", "e => e.style.transform") != before
        # Downloads, one by one, equal what `esrgan upscale` writes with the same options.
        for name, src in (("rgba.png", rgba), ("photo.jpg", photo)):
            with page.expect_download() as info:
                row(page, name).locator("a.download").click()
            download = info.value
            want = cli_output(src, tmp_path / f"cli-{download.suggested_filename}", "--model",
                              models_dir / "tiny.safetensors", "--device", "cpu", "--outscale", "2")
            assert Path(download.path()).read_bytes() == want, name
            assert download.suggested_filename == {"rgba.png": "rgba_x2.png", "photo.jpg": "photo_x2.jpg"}[name]
        with page.expect_download() as info:
            page.click("#zip")
        assert info.value.suggested_filename == "esrgan-results.zip"
        assert page.locator("#message").inner_text() == ""
        assert page.outside_requests == []


def test_preview_and_a_b_compare_on_one_crop(browser: Any, tmp_path: Path, models_dir: Path) -> None:
    other = tiny_model(seed=5)
    save_safetensors(other.state_dict(), other.config, models_dir / "other.safetensors")
    src = rgba_png(tmp_path / "rgba.png", h=40, w=40)
    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (base, _):
        page = open_page(browser, base)
        drop(page, src)
        row(page, "rgba.png").locator("text=ready").wait_for()
        page.click("#preview")
        page.wait_for_function("() => document.getElementById('tagL').textContent === 'before (crop)'")
        page.wait_for_function("() => document.getElementById('right').naturalWidth === 160")  # 40 px crop
        page.select_option("#modelB", "other.safetensors")
        page.click("#preview")
        page.wait_for_function("() => document.getElementById('tagR').textContent === 'other.safetensors'")
        assert page.locator("#tagL").inner_text() == "tiny.safetensors"
        assert page.locator("#viewtitle").inner_text().endswith("tiny.safetensors | other.safetensors")
        page.click("#back")
        assert page.locator("#tagL").inner_text() == "before"


def test_bad_input_is_one_line_on_the_page(browser: Any, tmp_path: Path, models_dir: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    big = rgba_png(tmp_path / "big.png", h=64, w=64)
    good = rgba_png(tmp_path / "good.png", h=10, w=10)
    (tmp_path / "outside.safetensors").write_bytes((models_dir / "tiny.safetensors").read_bytes())
    with running(ServeConfig(models_dir=models_dir, device="cpu", max_upload_bytes=3000)) as (base, service):
        page = open_page(browser, base)
        drop(page, text)
        row(page, "notes.png").locator(".failed").wait_for()
        lines = [row(page, "notes.png").locator(".state").inner_text(), page.locator("#message").inner_text()]
        drop(page, big)
        row(page, "big.png").locator(".failed").wait_for()
        lines += [row(page, "big.png").locator(".state").inner_text(), page.locator("#message").inner_text()]
        assert lines[0] == lines[1] and lines[0].startswith("notes.png: not an image")
        assert lines[2] == lines[3] == ("big.png: larger than the upload limit of 0.003 MB (esrgan serve "
                                        "--max-upload-mb raises it)")
        drop(page, good)
        row(page, "good.png").locator("text=ready").wait_for()
        # A page that names a path outside --models-dir, or a model that does not exist (a tampered picker).
        for value, fragment in (("../outside.safetensors", "'../outside.safetensors': the page may name registry "
                                                           "models or files directly inside --models-dir, not a path"),
                                ("no-such-model", "no model named 'no-such-model' (known: ")):
            page.eval_on_selector("#model", "(s, v) => { const o = new Option(v, v); s.add(o); s.value = v; }", value)
            page.locator("#message").evaluate("e => e.textContent = ''")
            page.click("#run")
            page.wait_for_function("() => document.getElementById('message').textContent !== ''")
            message = page.locator("#message").inner_text()
            assert fragment in message and "\n" not in message and "Traceback" not in message, message
        # The server goes on serving: the same file with a real model finishes, and only it is on the server.
        page.select_option("#model", "tiny.safetensors")
        page.click("#run")
        row(page, "good.png").locator("a.download").wait_for(timeout=120_000)
        kept = sorted(p.name for p in service.folder.iterdir())
        assert len(kept) == 2 and kept[1].startswith("upload-") and kept[0].startswith("job-"), kept
        assert [p.name for p in next(p for p in service.folder.iterdir() if p.is_dir()).iterdir()] == ["good_x4.png"]
        assert page.outside_requests == []


def test_two_tabs_submit_at_once(browser: Any, tmp_path: Path, models_dir: Path) -> None:
    srcs = [rgba_png(tmp_path / f"tab{i}.png", h=40, w=40, seed=i) for i in range(2)]
    with running(ServeConfig(models_dir=models_dir, device="cpu")) as (base, service):
        spans: list[tuple[str, float, float]] = []
        lock = threading.Lock()
        original = service._run_job

        def timed(job: Any) -> None:
            start = time.monotonic()
            original(job)
            with lock:
                spans.append((job.upload.name, start, time.monotonic()))

        service._run_job = timed  # type: ignore[method-assign]
        tabs = [open_page(browser, base) for _ in range(2)]
        for tab, src in zip(tabs, srcs, strict=True):
            drop(tab, src)
            row(tab, src.name).locator("text=ready").wait_for()
        # Both press "Upscale all" in the same instant.
        for tab in tabs:
            tab.evaluate("() => { window.go = () => document.getElementById('run').click(); }")
        tabs[0].evaluate("() => setTimeout(window.go, 200)")
        tabs[1].evaluate("() => setTimeout(window.go, 200)")
        for tab, src in zip(tabs, srcs, strict=True):
            row(tab, src.name).locator("a.download").wait_for(timeout=120_000)
            with tab.expect_download() as info:
                row(tab, src.name).locator("a.download").click()
            want = cli_output(src, tmp_path / f"cli-{src.name}", "--model", models_dir / "tiny.safetensors",
                              "--device", "cpu")
            assert Path(info.value.path()).read_bytes() == want
    assert sorted(s[0] for s in spans) == ["tab0.png", "tab1.png"]
    (_, _, first_end), (_, second_start, _) = sorted(spans, key=lambda s: s[1])
    assert second_start >= first_end  # one after the other
