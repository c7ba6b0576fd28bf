"""Render docs/serve.png: the `esrgan serve` page with the before/after slider, in headless Chromium.

    python docs/serve_screenshot.py -o docs/serve.png

It starts the page's server on a free port of 127.0.0.1 (as `esrgan serve` does), drops docs/real-photo-input.jpg
(a web-quality JPEG), upscales it ×4 with the bundled default model on the CPU, puts the slider at the middle of a
100 % view of the face, and saves a screenshot. Needs the `web` and `dev` extras and a chromium
(`apt-get install -y chromium`; or name one with ESRGAN_CHROMIUM).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from esrgan_cli.serve.server import serving_in_thread
from esrgan_cli.serve.service import ServeConfig

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=HERE / "serve.png")
    parser.add_argument("--image", type=Path, default=HERE / "real-photo-input.jpg")
    args = parser.parse_args()
    chromium = os.environ.get("ESRGAN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium (or set ESRGAN_CHROMIUM)")

    with serving_in_thread(ServeConfig(device="cpu")) as (base, _service):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/")
            page.wait_for_selector("#model option", state="attached")
            data = base64.b64encode(args.image.read_bytes()).decode()
            transfer = page.evaluate_handle("""([name, b64]) => {
                const dt = new DataTransfer();
                dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name));
                return dt;
            }""", [args.image.name, data])
            page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
            page.locator("#list tr", has_text="ready").wait_for()
            page.click("#run")
            page.locator("#list a.download").wait_for(timeout=300_000)
            page.click("#list tr:first-child td.name")
            page.wait_for_function("() => document.getElementById('right').naturalWidth > 0")
            page.click("[data-zoom='1']")
            # Pan so that the middle of the output (the face) is in view; the slider at the middle.
            box = page.locator("#stage").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2 + 20, steps=4)
            page.mouse.up()
            page.locator("#slider").fill("50")
            page.mouse.move(0, 0)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
