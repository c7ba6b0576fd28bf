"""The server's state without the web framework: uploaded files, the job queue and its one worker per device,
previews of one crop, and the outputs. Files live in one private temporary folder, removed on close; a file that
is refused or a job that fails leaves nothing behind.

Whole files go through `upscale_path`, the call `esrgan upscale IN -o OUT` makes, so a download is the same bytes
as the command line's output with the same options; a preview crop goes through `Upscaler.upscale`."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrgan_cli.defaults import DEFAULT_MAX_OUTPUT_PIXELS
from esrgan_cli.errors import EsrganError
from esrgan_cli.serve.options import JobSettings, RequestError, job_settings
from esrgan_cli.serve.preview import Crop, preview_crop, probe_upload

if TYPE_CHECKING:
    from esrgan_cli.upscale.upscaler import Upscaler

log = logging.getLogger("esrgan.serve")


@dataclass(frozen=True)
class ServeConfig:
    models_dir: Path | None = None
    max_upload_bytes: int = 200 * 1024 * 1024
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    device: str = "auto"


@dataclass
class Upload:
    id: str
    name: str  # the browser's file name, for messages and output names; never used as a path
    path: Path
    width: int
    height: int
    frames: int


@dataclass
class Job:
    id: str
    upload: Upload
    settings: JobSettings
    output_name: str
    state: str = "queued"  # queued, running, done, failed
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    done: int = 0
    total: int = 0
    started: float | None = None
    seconds: float | None = None
    output: Path | None = None

    def progress(self) -> float:
        if self.state == "done":
            return 1.0
        return self.done / self.total if self.total else 0.0


class Service:
    """One worker thread runs jobs and previews one at a time, first come first served (one device)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.folder = Path(tempfile.mkdtemp(prefix="esrgan-serve-"))
        self.uploads: dict[str, Upload] = {}
        self.jobs: dict[str, Job] = {}
        self._queue: list[tuple[Job | None, Callable[[], None]]] = []
        self._lock = threading.Condition()
        self._models: OrderedDict[str, Upscaler] = OrderedDict()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="esrgan-serve-worker", daemon=True)
        self._worker.start()

    # Uploads -------------------------------------------------------------------------------------------------
    def upload_path(self) -> tuple[str, Path]:
        """A fresh id and the file the request's body goes into."""
        uid = uuid.uuid4().hex
        return uid, self.folder / f"upload-{uid}"

    def accept_upload(self, uid: str, name: str, path: Path) -> Upload:
        """Keep the file if its header says it is an image within the limits; else remove it and raise one line."""
        name = clean_name(name)
        try:
            width, height, frames = probe_upload(path, name, self.config.max_output_pixels)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        upload = Upload(uid, name, path, width, height, frames)
        with self._lock:
            self.uploads[uid] = upload
        return upload

    def forget_upload(self, uid: str) -> None:
        with self._lock:
            upload = self.uploads.pop(uid, None)
            busy = upload is not None and any(j.upload is upload and j.state in ("queued", "running")
                                              for j in self.jobs.values())
            if upload is not None and busy:
                self.uploads[uid] = upload
                raise RequestError(f"{upload.name}: a job still uses it")
        if upload is not None:
            upload.path.unlink(missing_ok=True)

    def _upload(self, uid: object) -> Upload:
        with self._lock:
            upload = self.uploads.get(uid) if isinstance(uid, str) else None
        if upload is None:
            raise RequestError("that file is no longer on the server; drop it again")
        return upload

    # Jobs ----------------------------------------------------------------------------------------------------
    def submit(self, data: dict[str, Any]) -> Job:
        upload = self._upload(data.get("file"))
        settings = job_settings(data, self.config.models_dir)
        job = Job(uuid.uuid4().hex, upload, settings, settings.output_name(upload.name))
        with self._lock:
            self.jobs[job.id] = job
            self._queue.append((job, lambda: self._run_job(job)))
            self._lock.notify_all()
        return job

    def job(self, jid: str) -> Job:
        with self._lock:
            job = self.jobs.get(jid)
        if job is None:
            raise RequestError("no such job (the server may have been restarted)")
        return job

    def position(self, job: Job) -> int:
        """Jobs and previews ahead of a queued job (0: next)."""
        with self._lock:
            for i, (queued, _) in enumerate(self._queue):
                if queued is job:
                    return i
        return 0

    def forget_job(self, jid: str) -> None:
        with self._lock:
            job = self.jobs.get(jid)
            if job is None or job.state in ("queued", "running"):
                return
            del self.jobs[jid]
        if job.output is not None:
            shutil.rmtree(job.output.parent, ignore_errors=True)

    def preview(self, data: dict[str, Any]) -> Future[dict[str, str]]:
        """One crop through the model, in the same queue as the jobs; the future gives the crop before and after
        as PNG data URLs."""
        from esrgan_cli.serve.models import resolve_choice
        from esrgan_cli.serve.options import tile_setting

        upload = self._upload(data.get("file"))
        spec = resolve_choice(data.get("model"), self.config.models_dir)
        crop = Crop.from_request(data, upload.width, upload.height)
        tile = tile_setting(data.get("tile", "auto"))
        future: Future[dict[str, str]] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(preview_crop(upload.path, crop, self._model(spec), tile))
            except EsrganError as e:
                future.set_exception(RequestError(self._clean(str(e), upload)))
            except Exception as e:  # a bug: one line on the page, the traceback in the server's log
                log.exception("preview failed")
                future.set_exception(RequestError(f"internal error: {type(e).__name__}: {e}".splitlines()[0]))

        with self._lock:
            self._queue.append((None, run))
            self._lock.notify_all()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    # The worker ----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                _, task = self._queue[0]
            try:
                task()
            finally:
                with self._lock:
                    self._queue.pop(0)

    def _model(self, spec: str) -> Upscaler:
        """Loaded once and kept (the two most recent: an A/B comparison needs both)."""
        from esrgan_cli.api import load_model

        if spec not in self._models:
            self._models[spec] = load_model(spec, self.config.device)
            while len(self._models) > 2:
                self._models.popitem(last=False)
        self._models.move_to_end(spec)
        return self._models[spec]

    def _run_job(self, job: Job) -> None:
        from esrgan_cli.upscale.pipeline import UpscaleOptions, upscale_path

        with self._lock:
            job.state, job.started = "running", time.monotonic()
        folder = self.folder / f"job-{job.id}"
        try:
            upscaler = self._model(job.settings.spec)
            s = job.settings
            options = UpscaleOptions(tile=s.tile, outscale=s.outscale(upscaler.scale, job.upload.width),
                                     alpha=s.alpha, max_output_pixels=self.config.max_output_pixels)
            folder.mkdir()
            dst = folder / job.output_name

            def progress(n: int, total: int) -> None:
                job.done, job.total = job.done + n, total

            result = upscale_path(job.upload.path, dst, upscaler, options, s.quality, progress)
        except Exception as e:
            shutil.rmtree(folder, ignore_errors=True)
            if not isinstance(e, EsrganError):
                log.exception("job failed")
            line = str(e) if isinstance(e, EsrganError) else f"internal error: {type(e).__name__}: {e}"
            with self._lock:
                job.state, job.error = "failed", self._clean(line, job.upload)
            return
        with self._lock:
            job.notes = [self._clean(n, job.upload) for n in dict.fromkeys(result.notes)]
            job.output, job.seconds, job.state = dst, time.monotonic() - (job.started or 0.0), "done"

    def _clean(self, line: str, upload: Upload) -> str:
        """One line that names the upload as the browser knows it, never a path on the server."""
        line = line.replace(str(upload.path), upload.name)
        line = re.sub(re.escape(str(self.folder)) + r"/(job-[0-9a-f]+/)?", "", line)
        return (line.splitlines() or [""])[0].replace("--max-output-pixels", "esrgan serve --max-output-pixels")


def clean_name(name: str) -> str:
    """The last part of a browser's file name, printable and at most 200 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable() and c not in '<>:"|?*').strip(" .") or "image"
    return base[-200:]


def status(service: Service, job: Job) -> dict[str, Any]:
    """What the page shows for a job."""
    eta = None
    if job.state == "running" and job.started is not None and 0 < job.done < (job.total or 1):
        elapsed = time.monotonic() - job.started
        eta = elapsed * (job.total - job.done) / job.done
    return {
        "id": job.id, "file": job.upload.id, "name": job.upload.name, "output": job.output_name,
        "state": job.state, "progress": round(job.progress(), 4), "eta": None if eta is None else round(eta, 1),
        "position": service.position(job) if job.state == "queued" else None, "error": job.error,
        "notes": job.notes, "seconds": None if job.seconds is None else round(job.seconds, 2),
        "model": job.settings.model, "size": os.path.getsize(job.output) if job.output else None,
    }

