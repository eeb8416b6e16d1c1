"""One writer per folder: an advisory lock on a file, held while a command writes the folder.

`folder_lock(folder, lock_path)` takes an exclusive `fcntl.flock` on `lock_path` without waiting
and writes the holder's PID there; a second process refuses at once with `FolderInUse`
("FOLDER is in use by process N"). The kernel drops a flock when its process ends, however it
ends (kill -9 included), so a lock is never left stuck: the lock file a killed run leaves behind
is simply taken by the next one. On release the file is removed while still held; a process that
opened it just before then finds, once it holds the lock, that the path no longer names the file
it locked, and opens the path again. Used by `ehrjepa preprocess` (staging.py, a lock beside OUT,
since OUT itself is replaced) and `ehrjepa train` (train/run_folder.py, the run folder).
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path


class FolderInUse(FileExistsError):
    """Another live process holds the folder's lock; the message names the folder and its PID.

    A FileExistsError, so the commands' existing one-line handlers report it."""


@contextmanager
def folder_lock(folder: str | Path, lock_path: str | Path, hint: str = ""):
    """Hold `lock_path`'s lock for the body; FolderInUse (naming `folder`) when another process
    holds it. `hint` follows the message after a colon (e.g. what the user can do)."""
    lock_path = Path(lock_path)
    fd = _acquire(Path(folder), lock_path, hint)
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)  # still held: nobody can take this file in between
        except FileNotFoundError:
            pass
        os.close(fd)  # drops the lock


def _acquire(folder: Path, lock_path: Path, hint: str) -> int:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            pid = _holder(fd)
            os.close(fd)
            who = f"process {pid}" if pid else "another process"
            raise FolderInUse(f"{folder} is in use by {who}" + (f": {hint}" if hint else "")) \
                from None
        if _same_file(fd, lock_path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the holder released and removed it after we opened it: open the path anew


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int, tries: int = 20) -> int | None:
    """The holder's PID from the lock file; it writes it just after taking the lock, so an empty
    file is read again for a moment."""
    for _ in range(tries):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None
