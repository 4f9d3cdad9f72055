"""One agent per data directory: an exclusive ``flock`` on ``<data_dir>/agent.lock``.

Two agents on one data directory share the outbox's seq counter and the
model store, so the control plane would store one window under several
seqs. ``edgefleet-agent run`` (and ``enroll``, which writes the trust
store) takes this lock first and holds it for the life of the process.

Guarantees:

* at most one process holds the lock of a data directory at a time;
* the kernel releases it when the holder exits, however it exits
  (``kill -9`` included), so a lock file left behind never blocks a start;
* the holder's PID is in the file while it holds it, for the refusal message.

POSIX only (``fcntl``): the agent runs on Linux devices. ``flock`` is
advisory: ``status`` and ``doctor`` only read the data directory and do not
take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = "agent.lock"


class DataDirBusy(Exception):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "a process that has not written its PID yet"
        super().__init__(f"{data_dir} is in use by another agent ({holder}); stop it first")
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """The exclusive lock of one data directory; ``acquire`` never waits."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, creating the directory and the file as needed.

        Raises ``DataDirBusy`` when another process (or another ``DataDirLock``
        of this one) holds it, ``OSError`` when the file cannot be opened.
        """
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # No O_TRUNC: the PID in the file belongs to the holder until we hold the lock.
        # The descriptor is not inherited by child processes (PEP 446), so a child cannot
        # keep the lock alive after the agent dies.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirBusy(self.data_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; the file stays.

        Unlinking it would let two processes hold a lock at once: one on the
        old file it opened before the unlink, one on a new file at the same path.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
