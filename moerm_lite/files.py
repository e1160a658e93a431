"""Files written safely: atomic replacement, and a lock for read-modify-write of a user's profile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _write_replace(path: Path, tmp: Path, text: str | bytes | memoryview, fd: int | None = None) -> None:
    """Write ``text`` to ``tmp`` (fsynced, the mode ``path`` has or 0644), then rename it over ``path``."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # mkstemp alone would leave 0600
    if fd is None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str | bytes | memoryview) -> None:
    """Write ``text`` (or bytes) to ``path`` so that a crash leaves either the old file or the new one.

    Writers that do not share a lock each get their own temporary file (``mkstemp``).
    """
    import tempfile  # here, not at module level: it costs ~2 ms of `import moerm_lite`

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _write_replace(path, Path(tmp), text, fd)


def lock_path(path: Path) -> Path:
    """The lock file that guards ``path``: ``.NAME.lock`` next to it (kept; it holds no data)."""
    return path.parent / f".{path.name}.lock"


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (blocking) for a read-modify-write by one process at a time.

    An OS lock on ``.NAME.lock`` (``flock`` on POSIX, ``msvcrt.locking`` on Windows): it is released
    when the process ends, however it ends, so a killed writer never leaves the file locked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
                    break
                except OSError:  # LK_LOCK gives up after 10 s; keep waiting like flock does
                    continue
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def locked_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path``; the caller holds :func:`file_lock` on it.

    Under the lock one fixed temporary name (``.NAME.tmp``) suffices: a writer killed mid-save
    leaves at most that one file, and the next save reuses it.
    """
    path = Path(path)
    _write_replace(path, path.parent / f".{path.name}.tmp", text)
