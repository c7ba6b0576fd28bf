"""The page under uvicorn: one recipe for `esrgan serve`, and a server on a thread for the tests and the screenshot
script, so all three run the app the same way."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from esrgan_cli.serve.app import create
from esrgan_cli.serve.service import ServeConfig, Service


def uvicorn_server(app: Any) -> uvicorn.Server:
    """uvicorn quiet (warnings only, no access log): esrgan's own lines are the command line's to print."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))


@contextmanager
def serving_in_thread(config: ServeConfig, start_timeout_s: float = 60.0) -> Iterator[tuple[str, Service]]:
    """The page on a free port of 127.0.0.1, served on a thread as `esrgan serve` serves it; yields its base URL and
    the service, and stops the server on exit."""
    app, service = create(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()
        sock.close()
