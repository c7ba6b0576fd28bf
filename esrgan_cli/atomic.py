"""Writing outputs so that nothing half-written is ever seen: a temp file beside the target, then a rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from esrgan_cli.errors import OutputWriteError, first_line


def check_folder(path: Path) -> Path:
    """The folder `path` would be written in; refused before any work if it does not exist."""
    folder = Path(path).parent
    if not os.path.isdir(folder):
        raise OutputWriteError(f"{path}: folder {folder} does not exist")
    return folder


def check_output(src: Path, dst: Path) -> None:
    """Before any work: the output must not be the input, and its folder must exist."""
    same = os.path.abspath(src) == os.path.abspath(dst)
    if not same and os.path.exists(dst) and os.path.exists(src):
        same = os.path.samefile(src, dst)
    if same:
        raise OutputWriteError(f"{dst}: the output would overwrite the input; choose another output path")
    check_folder(dst)


def _reason(e: OSError) -> str:
    return e.strerror or first_line(e)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it replaces `path`, on any failure it is removed.

    The temp file is in the same folder so the final `os.replace` is a rename on one
    file system: readers see the old file or the complete new one, never a partial one.
    """
    path = Path(path)
    folder = check_folder(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OutputWriteError(f"{path}: cannot write there ({_reason(e)})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputWriteError(f"{path}: cannot write ({_reason(e)})") from None
        raise
