"""Ctrl-C: the first one stops the sweep after the current checkpoint of each running stage; a second stops at once.

The driver cannot reach into trial processes, so the first SIGINT writes a stop request into the sweep directory
(``.stop_requested``); every stage run checks for it each time it has written a checkpoint and then ends without a
result (:class:`StageInterrupted`), so a later ``resume`` continues it from that checkpoint. Ray Tune's own SIGINT
handler is turned off (it would end the Tune run and let the next phase start).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ..layout import SweepDir
from ..trainer import NullReporter


class StageInterrupted(Exception):
    """A stage run ended on a stop request, right after writing its checkpoint at ``step``."""

    def __init__(self, stage: str, step: int):
        self.stage, self.step = stage, step
        super().__init__(f"{stage} stopped at step {step} on a stop request (resume continues it)")


class StopRequestReporter(NullReporter):
    """Raises :class:`StageInterrupted` after a checkpoint when the sweep's stop request exists."""

    def __init__(self, layout: SweepDir, stage: str):
        self.request, self.stage = layout.stop_request, stage

    def checkpoint(self, step: int, path: Path) -> None:
        if self.request.exists():
            raise StageInterrupted(self.stage, step)


class InterruptHandler:
    """Installed in the driver while a sweep runs: the first SIGINT requests the stop, the second raises
    ``KeyboardInterrupt`` at once. :attr:`requested` says whether a stop was asked for."""

    def __init__(self, layout: SweepDir):
        self.layout = layout
        self.layout.stop_request.unlink(missing_ok=True)  # a request left by an earlier driver is not ours
        self.requested = False
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None  # signal.signal returned it

    def __enter__(self) -> InterruptHandler:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # read by Tuner.fit in this process: ours stays installed
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
        self.layout.stop_request.unlink(missing_ok=True)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.layout.stop_request.write_text(str(os.getpid()))
        print(
            "\nstopping: each running stage stops after its next checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
