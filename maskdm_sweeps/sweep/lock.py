"""One driver per sweep directory: an advisory ``fcntl`` lock that the OS releases when its process dies.

A second ``run`` or ``resume`` of the same sweep would train every stage again beside the first and interleave their
files; it is refused instead, naming the holder. A lock file left behind by a killed driver is not held by anyone,
so it never blocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..layout import StageRun, SweepDir


class SweepLocked(RuntimeError):
    """Another driver holds the sweep directory; the message names its pid and host."""


class DriverLock:
    """The held lock of one sweep directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, layout: SweepDir):
        self.path = layout.driver_lock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 (held open while the lock is: closed by release)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(self.path)
            self._file.close()
            raise SweepLocked(
                f"{layout.path} is being run by another maskdm-sweep driver ({holder}); wait for it "
                "to finish or stop it (Ctrl-C), then `maskdm-sweep resume` it"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, self._file)
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    except (OSError, ValueError):
        return "pid unknown"


class LineLock:
    """The lock of one pre-training line (``<line>/.train.lock``): one process trains a line at a time; another
    that needs the line waits here, then finds on disk what the first one trained."""

    def __init__(self, run: StageRun):
        run.path.mkdir(parents=True, exist_ok=True)
        self._file = open(run.train_lock, "a+")  # noqa: SIM115 (held open for the lock: closed by __exit__)

    def __enter__(self) -> LineLock:
        fcntl.flock(self._file, fcntl.LOCK_EX)  # blocking; the OS releases it when a holder dies
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
