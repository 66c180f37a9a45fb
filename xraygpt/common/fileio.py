"""Crash-safe file writes: readers see the old file or the complete new one, never a part.

The one place that knows temp file + fsync + rename; every writer of results,
checkpoints, caches and datasets calls these.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def publish_folder(tmp: str | os.PathLike, folder: str | os.PathLike, files: Iterable[str] = (),
                   subfolders: Iterable[str] = ()) -> Path:
    """Make a folder written under a temporary name durable, then give it its final name in one rename.

    ``files`` and ``subfolders`` (names inside ``tmp``) are fsync'ed first, so a crash leaves either no
    folder or a complete one.
    """
    tmp, folder = Path(tmp), Path(folder)
    for name in files:
        fsync_file(tmp / name)
    for name in subfolders:
        fsync_dir(tmp / name)
    fsync_dir(tmp)
    os.rename(tmp, folder)
    fsync_dir(folder.parent)
    return folder


def atomic_write_with(path: str | os.PathLike, write_to_path: Callable[[str], None], *, durable: bool = True) -> Path:
    """Call ``write_to_path(tmp)`` (a library that wants a file name), then rename to ``path``.

    ``durable=False`` skips the fsyncs: still never a partial file, but a power cut may lose the
    new one (right for caches that are rebuilt on a miss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_to_path(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a binary temp file, fsync it and rename it to ``path``."""

    def to_path(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()

    return atomic_write_with(path, to_path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def try_lock_exclusive(handle: IO[Any]) -> bool:
    """Take an advisory exclusive lock (``fcntl.flock``) on an open file; False when another process holds it.

    Released when the handle is closed or the process ends (even by SIGKILL).  Where
    ``fcntl`` does not exist (Windows) there is no lock and this returns True.
    """
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
