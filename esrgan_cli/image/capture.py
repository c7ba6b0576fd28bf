"""What a decoder says while it works: Python warnings, Pillow's log records, and what C libraries (libtiff,
libpng, …) write to fd 2.

Pillow warns about corrupt EXIF, broken APNG chunks and oversized TIFF tags; its plugins also log (TIFF's "More
samples per pixel than can be decoded" is a `logging` error, which Python's last-resort handler would print on
`sys.stderr`, outside any fd 2 capture); and libtiff's C code prints ("Fax4Decode: Bad code word …") straight to
file descriptor 2. All three are collected here so the caller can make one note of them.

The redirection of fd 2 is process-wide, so one lock serialises every capture: a batch decodes on a reader thread
while the main thread computes. The command line points its own `sys.stderr` at a duplicate of fd 2 before any work
(`keep_python_stderr`), so its messages never land in a capture. Python's warning filters are process-wide too
(before Python 3.14's context-aware warnings): a warning that another thread raises during a capture would land in
that file's note; esrgan's compute thread raises none in normal operation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import TextIO

from PIL import Image

_CAPTURE_LOCK = threading.RLock()
MAX_CAPTURED_BYTES = 64 * 1024


@contextlib.contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """Yield a list that, once the block ends (normally or not), holds what was said during it, one item per line.

    Pillow's DecompressionBombWarning stays an exception, so the caller can refuse the file.
    """
    messages: list[str] = []
    with _CAPTURE_LOCK, warnings.catch_warnings(record=True) as caught, _pil_logged() as logged:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _fd2_captured(messages):
                yield messages
        finally:
            said = [_clean(str(w.message)) for w in caught] + [_clean(m) for m in logged]
            messages[:0] = [m for m in said if m]


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.into.append(record.getMessage())
        except Exception:  # a record whose arguments do not format: its template still says something
            self.into.append(str(record.msg))


@contextlib.contextmanager
def _pil_logged() -> Iterator[list[str]]:
    """Pillow's log records of WARNING and above during the block, kept from every other handler (a program that
    configured logging would otherwise print them too)."""
    logger = logging.getLogger("PIL")
    records: list[str] = []
    handler = _Collect(records)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def decoder_note(messages: list[str], limit: int = 160) -> str | None:
    """One line for what a decoder said: the first distinct message and how many more there were."""
    distinct = list(dict.fromkeys(m for m in messages if m))
    if not distinct:
        return None
    first = distinct[0] if len(distinct[0]) <= limit else distinct[0][: limit - 1] + "…"
    more = f" (and {len(distinct) - 1} more)" if len(distinct) > 1 else ""
    return f"the decoder warned: {first}{more}"


def _clean(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def _fd2_captured(messages: list[str]) -> Iterator[None]:
    """Point fd 2 at a temp file for the block; its text (up to 64 kB) is appended to `messages`, line by line."""
    _flush(sys.stderr)
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to capture
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                _flush(sys.stderr)
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read(MAX_CAPTURED_BYTES).decode("utf-8", errors="replace")
                messages.extend(line for line in (_clean(s) for s in text.splitlines()) if line)
    finally:
        os.close(saved)


def _flush(stream: TextIO | None) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):
        pass


def keep_python_stderr() -> TextIO | None:
    """Give `sys.stderr` its own duplicate of fd 2, so that Python's messages (esrgan's own lines, the progress
    bar, a traceback) keep going to the terminal while a decode has fd 2 pointed elsewhere.

    Only when `sys.stderr` is the real fd 2 (not a test's capture). Returns the stream it replaced, to restore.
    """
    current = sys.stderr
    if current is None or current is not sys.__stderr__:
        return None
    original: TextIO = current  # type: ignore[assignment]  # narrowed to not-None just above
    try:
        if original.fileno() != 2:
            return None
        own = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None
    sys.stderr = open(own, "w", encoding=original.encoding, errors="backslashreplace", buffering=1)
    return original


def restore_python_stderr(original: TextIO | None) -> None:
    if original is None:
        return
    own, sys.stderr = sys.stderr, original
    with contextlib.suppress(OSError, ValueError):
        own.close()
