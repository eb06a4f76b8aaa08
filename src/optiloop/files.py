"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then os.replace.

A crash or a failing writer never leaves a half-written file under a real name, the previous
version survives intact, and no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import DiskError, OptiloopError

TEMP_SUFFIX = ".optiloop-tmp"  # only optiloop's own temporaries end so: safe to clean up
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) ...
os.umask(_UMASK)  # ... and put back at once


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *,
                before_replace: Callable[[], None] | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    ``before_replace`` runs once the new file is durable (written and fsynced) and just before it
    takes the real name: rotating the old file away there never loses it to a failed write.
    A failure of the file system (disk full, read-only, permission, I/O error) becomes a one-line
    ``DiskError`` naming the file; the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared like any file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise DiskError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    with atomic_open(path, "w") as f:
        f.write(text)


def check_writable(path: str | os.PathLike, what: str, *, file: bool = False) -> Path:
    """Fail now, in one line, if ``path`` could not be created and written (a name too long, a
    read-only or missing parent; with ``file``, a folder where a file is to go): before any work
    starts, not after it. Returns ``path``."""
    path = Path(path)
    if file and path.is_dir():
        raise OptiloopError(f"{what} {path}: is a folder; give a file name, e.g. {path / 'lr.png'}")
    for part in path.parts:  # first: a too-long name makes even exists() raise
        if len(os.fsencode(part)) > 255:
            raise OptiloopError(f"{what} {path}: the name {part[:40]}... is longer than the 255 bytes file "
                                "systems allow")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    base = existing if existing.is_dir() else existing.parent
    if existing.exists() and not existing.is_dir() and existing != path:
        raise OptiloopError(f"{what} {path}: {existing} is a file, not a folder")
    try:  # a real probe: os.access says yes to root even on a read-only file system
        os.rmdir(tempfile.mkdtemp(prefix=".optiloop-probe-", dir=base))
    except OSError as e:
        raise OptiloopError(f"{what} {path}: cannot create anything in {base} ({e.strerror})") from None
    return path


LOCK_NAME = ".optiloop.lock"


class FolderLock:
    """An exclusive lock on a folder, held by this process until ``release`` (or its exit).

    ``flock`` on ``<folder>/.optiloop.lock``: the kernel drops it when the holder dies, so a lock
    left by a killed run is free again, never stale. A second process is refused with one line
    naming the holder's pid.

    Example:
        >>> import tempfile
        >>> lock = FolderLock(tempfile.mkdtemp()).acquire()
        >>> lock.release()
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl  # POSIX only: the lock is taken where the module exists


        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OptiloopError(f"{self.path.parent} is in use by another optiloop process (pid {holder}); "
                                    "wait for it to end, or choose another folder") from None
            try:  # the holder before us may have removed the file after we opened it: retry on the new one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and let go (removed while held: nobody can take a removed file)."""
        if self._fd is None:
            return
        # A folder made read-only keeps the file: harmless, the lock itself ends with the close.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
