"""The web app (Starlette, the `web` extra): one page and a small JSON API over `Service`.

Safe by default: the page makes no outside request (its script and style are inline, and a Content-Security-Policy
holds it to this server); a request that changes anything must carry the `X-Esrgan` header, which a page from
another site cannot send without a CORS preflight this server never grants; on a loopback address, a Host header
naming another machine is refused (DNS rebinding); uploads are held to a size, and their headers to the output
pixel limit, before they are kept."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from esrgan_cli.errors import EsrganError
from esrgan_cli.serve.models import model_choices
from esrgan_cli.serve.service import ServeConfig, Service, status

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
Handler = Callable[[Request], Awaitable[Response]]


def page_html() -> str:
    return resources.files("esrgan_cli.serve").joinpath("page.html").read_text(encoding="utf-8")


def _error(message: str, code: int = 400) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status_code=code)


def build_app(service: Service, loopback_only: bool = True) -> Starlette:
    """The app over `service`. With `loopback_only`, requests whose Host is not this machine's loopback name are
    refused."""
    config = service.config
    page = page_html()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def settings(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        choices = await run_in_threadpool(model_choices, config.models_dir)
        return JSONResponse({
            "models": [c.__dict__ for c in choices], "max_upload_bytes": config.max_upload_bytes,
            "max_output_pixels": config.max_output_pixels, "formats": ["png", "jpg", "webp", "tiff", "gif", "bmp"],
        })

    async def upload(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        name = request.query_params.get("name", "") or "image"
        uid, path = service.upload_path()
        size = 0
        try:
            with open(path, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size <= config.max_upload_bytes:
                        f.write(chunk)
                    elif f.tell():  # over the limit: the rest is read (so the browser gets the answer) and dropped
                        f.truncate(0)
                        f.seek(0)
            if size > config.max_upload_bytes:
                path.unlink(missing_ok=True)
                return _too_large(name, config.max_upload_bytes)
            if size == 0:
                path.unlink(missing_ok=True)
                return _error(f"{name}: an empty file")
            up = await run_in_threadpool(service.accept_upload, uid, name, path)
        except EsrganError as e:
            return _error(str(e))
        except OSError as e:
            path.unlink(missing_ok=True)
            return _error(f"{name}: the server cannot store it ({e.strerror or e})", 507)
        except BaseException:
            path.unlink(missing_ok=True)  # the browser went away mid-upload
            raise
        return JSONResponse({"id": up.id, "name": up.name, "width": up.width, "height": up.height,
                             "frames": up.frames})

    async def forget_upload(request: Request) -> Response:
        service.forget_upload(request.path_params["uid"])
        return JSONResponse({})

    async def submit(request: Request) -> Response:
        job = service.submit(await _json(request))
        return JSONResponse(status(service, job))

    async def job_status(request: Request) -> Response:
        return JSONResponse(status(service, service.job(request.path_params["jid"])))

    async def forget_job(request: Request) -> Response:
        service.forget_job(request.path_params["jid"])
        return JSONResponse({})

    async def output(request: Request) -> Response:
        job = service.job(request.path_params["jid"])
        if job.output is None:
            return _error(f"{job.upload.name}: no output ({job.state})", 409)
        inline = request.query_params.get("inline") == "1"
        return FileResponse(job.output, filename=job.output_name, content_disposition_type=(
            "inline" if inline else "attachment"), headers={"Cache-Control": "no-store"})

    async def view(request: Request) -> Response:
        """The output as a PNG the browser can show (a TIFF, say), for the slider only; downloads are the file."""
        from starlette.concurrency import run_in_threadpool

        from esrgan_cli.serve.preview import viewable_png

        job = service.job(request.path_params["jid"])
        if job.output is None:
            return _error(f"{job.upload.name}: no output ({job.state})", 409)
        return Response(await run_in_threadpool(viewable_png, job.output), media_type="image/png")

    async def archive(request: Request) -> Response:
        ids = [i for i in request.query_params.get("jobs", "").split(",") if i]
        jobs = [service.job(i) for i in ids]
        done = [j for j in jobs if j.output is not None]
        if not done:
            return _error("nothing finished to download yet", 409)
        fd, name = tempfile.mkstemp(suffix=".zip", dir=service.folder)
        os.close(fd)
        with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as z:
            taken: set[str] = set()
            for j in done:
                arcname = _unique(j.output_name, taken)
                z.write(str(j.output), arcname)
        return FileResponse(name, filename="esrgan-results.zip",
                            background=BackgroundTask(lambda: Path(name).unlink(missing_ok=True)))

    async def preview(request: Request) -> Response:
        import asyncio

        future = service.preview(await _json(request))
        return JSONResponse(await asyncio.wrap_future(future))

    routes = [
        Route("/", _guarded(index, service, loopback_only)),
        Route("/api/settings", _guarded(settings, service, loopback_only)),
        Route("/api/files", _guarded(upload, service, loopback_only), methods=["POST"]),
        Route("/api/files/{uid}", _guarded(forget_upload, service, loopback_only), methods=["DELETE"]),
        Route("/api/jobs", _guarded(submit, service, loopback_only), methods=["POST"]),
        Route("/api/jobs/{jid}", _guarded(job_status, service, loopback_only)),
        Route("/api/jobs/{jid}", _guarded(forget_job, service, loopback_only), methods=["DELETE"]),
        Route("/api/jobs/{jid}/output", _guarded(output, service, loopback_only)),
        Route("/api/jobs/{jid}/view", _guarded(view, service, loopback_only)),
        Route("/api/zip", _guarded(archive, service, loopback_only)),
        Route("/api/preview", _guarded(preview, service, loopback_only), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _guarded(handler: Handler, service: Service, loopback_only: bool) -> Handler:
    """Every route: Host checked, changes only with the X-Esrgan header, errors as one line of JSON."""

    async def guarded(request: Request) -> Response:
        host = request.headers.get("host", "").lower()
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if loopback_only and hostname not in LOOPBACK_HOSTS:
            return _error(f"this server answers only to 127.0.0.1 and localhost, not {host[:60]!r}", 403)
        if request.method != "GET" and request.headers.get("x-esrgan") != "1":
            return _error("a request that changes anything needs the X-Esrgan: 1 header (sent by the page)", 403)
        try:
            return await handler(request)
        except EsrganError as e:
            return _error(str(e))

    return guarded


async def _json(request: Request) -> dict[str, Any]:
    from esrgan_cli.serve.options import RequestError

    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError("the request is not a JSON object")
    return data


def _too_large(name: str, limit: int) -> JSONResponse:
    return _error(f"{name}: larger than the upload limit of {limit / 1e6:g} MB "
                  "(esrgan serve --max-upload-mb raises it)", 413)


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}{dot}{ext}" if dot else f"{name}-{n}"
    taken.add(candidate)
    return candidate


def create(config: ServeConfig, loopback_only: bool = True) -> tuple[Starlette, Service]:
    service = Service(config)
    return build_app(service, loopback_only), service

