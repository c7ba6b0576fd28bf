"""Files on disk: atomic writes (a temp file beside the target, then a rename), the folder lock, and checksums."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from esrgan_cli.errors import DiskFullError, FolderBusyError, OutputWriteError, first_line

_UMASK_LOCK = threading.Lock()
FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})


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


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux's /proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_failure(path: Path, e: OSError, doing: str = "cannot write") -> OutputWriteError:
    """An OSError while writing `path` as a one-line error; a full disk (or quota) is a DiskFullError."""
    if e.errno in FULL_ERRNOS:
        return DiskFullError(f"{path}: {doing} ({_reason(e)}): the disk is full; free space and run again")
    return OutputWriteError(f"{path}: {doing} ({_reason(e)})")


def _give_umask_mode(path: str) -> None:
    if os.name != "posix":
        return  # Windows has no modes to fix
    try:
        os.chmod(path, 0o666 & ~current_umask())
    except OSError:
        pass  # a file system without modes (some network or FAT mounts): its default is what the user gets


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it replaces `path`, on any failure it is removed.

    The temp file is in the same folder so the final `os.replace` is a rename on one
    file system: readers see the old file or the complete new one, never a partial one.
    `mkstemp` creates the file 0600; before the rename it is given the mode a plain `open` would (0666 less
    the umask), also when the writer replaced the temp file with its own (safetensors does).
    """
    path = Path(path)
    folder = check_folder(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise write_failure(path, e, "cannot write there") from None
    os.close(fd)
    try:
        yield Path(tmp)
        _give_umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_failure(path, e) from None
        raise


LOCK_NAME = ".esrgan.lock"



@contextmanager
def folder_lock(folder: Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder/.esrgan.lock` for the block, or refuse at once if another process has it.

    Two batches into one folder would both write every output and interleave their journal lines. The lock is
    an `flock`, so the kernel drops it when the holder exits, however it exits; the file itself stays.
    """
    path = Path(folder) / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the journal's whole-line appends are the only guard there
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_failure(path, e, "cannot create the lock file") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"{folder}: another esrgan batch is writing into this folder (lock {path} is "
                                  "held); wait for it to finish, or choose another output folder") from None
        except OSError:
            pass  # a file system without locks (some network mounts): go on unguarded, as before
        yield path
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def walk_sorted(
    top: str, recursive: bool = True, enter: Callable[[str], bool] = lambda path: True,
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under `top` that is not a folder walked into, as (its path relative to `top` with `/`
    separators, its entry), in sorted-path order (a folder before what it holds, as `sorted(Path.rglob)` gives),
    one folder listing in memory per level. Symlinked folders are not entered, nor folders for which `enter(path)`
    is false; unreadable ones are skipped. An unreadable `top` raises OSError (none if `enter(top)` is false)."""
    if not enter(top):
        return
    stack = [("", _sorted_listing(top))]
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        try:
            if recursive and entry.is_dir(follow_symlinks=False):
                if enter(entry.path):
                    stack.append((f"{prefix}{entry.name}/", _sorted_listing(entry.path)))
                continue
        except OSError:
            continue  # gone or unreadable since the listing: as if never there
        yield prefix + entry.name, entry


def _sorted_listing(path: str) -> Iterator[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return iter(sorted(it, key=lambda e: e.name))


# Pillow formats with an extension that a folder walk does not take as an image: stubs that need a plugin the user
# registers (BUFR, GRIB, HDF5: an ML folder's .h5 files would otherwise all fail), WMF/EMF (rendered on Windows
# only), EPS/PS (Ghostscript renders them) and MPEG (identified, never decoded). Named on the command line, such a
# file is still tried.
_NOT_WALKED = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The extensions (lower case, with the dot) a folder walk takes as images: every one Pillow reads, bar
    `_NOT_WALKED`. One list for batches, training and evaluation sets; a file named on its own is read whatever its
    extension. Imports Pillow's plugins, so it is asked only when a folder is walked."""
    from PIL import Image

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _NOT_WALKED)


def image_files(folder: Path) -> list[Path]:
    """Files under `folder` (recursive) with an image extension, hidden names skipped, sorted: the training and
    evaluation sets. (A batch walks its inputs with the same `walk_sorted`, keeping hidden files.)"""
    root = str(folder)
    found = []
    suffixes = image_suffixes()
    for rel, entry in walk_sorted(root, enter=lambda path: path == root or not os.path.basename(path).startswith(".")):
        name = entry.name
        if name.startswith(".") or os.path.splitext(name)[1].lower() not in suffixes:
            continue
        try:
            if entry.is_file():
                found.append(Path(folder, rel))
        except OSError:
            continue
    return sorted(found)
