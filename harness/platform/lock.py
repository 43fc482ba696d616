"""One platform per data dir: an flock on DATA_DIR/platform.lock, held for the platform's life.

Two platforms on one data dir would both write the registry, the CA serials and platform.json,
and the second would find the first one's ports busy or, worse, take them over after a restart.
The kernel drops an flock when its holder exits, however it exits (a kill -9 included), so a lock
file left behind never blocks the next start. The file holds the holder's pid, for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from harness.errors import Refused

LOCK_FILE = "platform.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or refuse naming the pid of the platform that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise Refused(f"data dir {self.path.parent}: cannot open {LOCK_FILE}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Refused(f"data dir {self.path.parent} is in use by another fleetrig platform (pid {holder}); "
                          "stop that one first, or give another --data-dir", status=409) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go; does nothing when it is not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock
