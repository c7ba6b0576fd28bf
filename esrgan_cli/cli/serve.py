"""`esrgan serve`: the web page on this machine. The `web` extra (Starlette, uvicorn) is imported only here, only
when the command runs, so `esrgan --help` and `import esrgan_cli` stay as fast as before."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import click

from esrgan_cli.cli.common import say
from esrgan_cli.defaults import DEFAULT_MAX_OUTPUT_PIXELS
from esrgan_cli.errors import EsrganError

DEFAULT_PORT = 8765
INSTALL_HINT = 'esrgan serve needs the web extra: pip install ".[web]" in the esrgan checkout'
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(group: click.Group) -> None:
    group.add_command(serve)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but 127.0.0.1/localhost lets other machines use the page (a "
                   "warning says so).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: any free port; the URL printed says which).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--models-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of weights files the page may offer besides the registry's models (only files directly "
                   "inside it).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps: one job at a time.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=200, show_default=True,
              help="Refuse uploaded files larger than this.")
@click.option("--max-output-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_OUTPUT_PIXELS,
              show_default=True, help="Refuse images whose output would be larger than this (as esrgan upscale).")
def serve(host: str, port: int, open_browser: bool, models_dir: Path | None, device: str, max_upload_mb: float,
          max_output_pixels: int) -> None:
    """A local web page: drop images, preview a crop, compare models, upscale, download.

    It listens on 127.0.0.1 only unless --host says otherwise, makes no outside
    requests, and runs one job at a time with a queue. Outputs are the same
    bytes as `esrgan upscale` with the same options. Ctrl-C stops it and removes
    every uploaded file and output.

    \b
    Examples:
      esrgan serve --open
      esrgan serve --port 9000 --models-dir ~/models
    """
    try:
        from esrgan_cli.serve.app import create
        from esrgan_cli.serve.server import uvicorn_server
    except ImportError:
        raise EsrganError(INSTALL_HINT) from None
    from esrgan_cli.serve.service import ServeConfig

    loopback = host in LOOPBACK
    if not loopback:
        say(f"warning: listening on {host}: anyone who can reach this machine on port {port} can upload images and "
            "use its CPU/GPU; there is no login")
    sock = _bind(host, port)
    config = ServeConfig(models_dir=models_dir, max_upload_bytes=int(max_upload_mb * 1e6),
                         max_output_pixels=max_output_pixels, device=device)
    app, service = create(config, loopback_only=loopback)
    server = uvicorn_server(app)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{sock.getsockname()[1]}/"
    say(f"serving on {url} (Ctrl-C stops)")
    threading.Thread(target=_when_started, args=(server, url, open_browser), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise EsrganError(f"cannot listen on {host}:{port} ({e.strerror or e}); try another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _when_started(server: object, url: str, open_browser: bool) -> None:
    """Warm the model's code (torch) once the page answers, and open the browser if asked."""
    while not getattr(server, "started", False):
        time.sleep(0.05)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        import esrgan_cli.upscale.upscaler  # noqa: F401  (torch's import, ~1-2 s, before the first job needs it)
    except Exception:
        pass
