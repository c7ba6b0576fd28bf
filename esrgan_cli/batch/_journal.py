"""The resume journal: an append-only record in OUTDIR of every output that was completely written."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from esrgan_cli.batch._jobs import Job
from esrgan_cli.files import sha256_of, write_failure

JOURNAL_NAME = ".esrgan-journal.jsonl"


def pixel_options(options: dict[str, Any], quality: int, dtype: str) -> dict[str, Any]:
    """What the journal compares to decide whether an output is still valid: every option that changes pixels."""
    kept = {k: v for k, v in options.items() if k not in ("max_output_pixels", "alpha_loss")}
    if not kept.get("first_frame", True):
        del kept["first_frame"]  # the default: journals written before the option existed stay valid
    if kept.get("strength", 0) is None:
        del kept["strength"]  # the same
    return {**kept, "quality": quality, "dtype": dtype}


class Journal:
    """An append-only JSON-lines record in OUTDIR of outputs that were completely written.

    An entry counts only while the input's sha256, the model's sha256 and the
    pixel-changing options still match and the output still has its recorded size.
    """

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / JOURNAL_NAME
        # output key → (input sha256, model sha256, options, output size). Compact, with the model and options
        # shared between entries, and read line by line, so a journal of a million files fits in little memory.
        self.entries: dict[str, tuple[Any, Any, Any, Any]] = {}
        self.retain = True  # keep what `record` writes in `entries` (a driver that is done planning need not)
        self._lock = threading.Lock()
        shared: dict[str, Any] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        model, options = entry.get("model_sha256"), entry.get("options")
                        model = shared.setdefault(f"m{model}", model)
                        options = shared.setdefault(json.dumps(options, sort_keys=True), options)
                        self.entries[entry["output"]] = (entry.get("input_sha256"), model, options,
                                                         entry.get("output_size"))
                    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                        continue  # a line cut short by a crash: that output is simply redone

    def append_only(self) -> None:
        """Planning is done: drop the entries read and keep none of those recorded from here on, so a driver's
        memory stays flat however long the batch."""
        self.entries.clear()
        self.retain = False

    def is_done(self, job: Job, model_sha256: str, options: dict[str, Any]) -> bool:
        entry = self.entries.get(job.key)
        if not entry or entry[1] != model_sha256 or entry[2] != options:
            return False
        try:
            if job.dst.stat().st_size != entry[3]:
                return False
        except OSError:
            return False
        return entry[0] == sha256_of(job.src)

    def record(self, job: Job, input_sha256: str, model_sha256: str, options: dict[str, Any],
               output_size: int | None = None) -> None:
        """Append the entry of a completely written output (`output_size`: its size, if the writer knows it)."""
        size = job.dst.stat().st_size if output_size is None else output_size
        entry = {"output": job.key, "input": str(job.src), "input_sha256": input_sha256,
                 "model_sha256": model_sha256, "options": options, "output_size": size,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self._append(line)
            if self.retain:
                self.entries[job.key] = (input_sha256, model_sha256, options, size)

    def _append(self, line: bytes) -> None:
        """Append one whole line, or nothing: a write that fails (a full disk) is cut back off."""
        try:
            with open(self.path, "a+b", buffering=0) as f:
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line  # a line cut short by a crash stays on its own line
                try:
                    view = memoryview(line)
                    while view:
                        view = view[f.write(view) or 0:]
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(size)
                    raise
        except OSError as e:
            raise write_failure(self.path, e, "cannot record in the journal") from None
