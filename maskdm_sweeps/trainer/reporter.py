"""The seam between the trainer and the world: a small protocol that Ray Tune and MLflow implement elsewhere.

The trainer calls ``metrics`` at a step, ``checkpoint`` after writing one, ``artifact`` for files such as sample
grids, and asks ``should_stop`` between steps (an early-stopping scheduler answers it). Whoever runs the stage calls
``finish`` once it has ended, with how it ended (a reporter that holds a run, MLflow's, closes it then).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..files import append_jsonl, read_jsonl
from ..layout import relative_path


@runtime_checkable
class Reporter(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Scalar metrics at an optimizer step, names grouped with '/' (``train/loss``, ``eval/fid``)."""

    def params(self, values: dict[str, str | int | float]) -> None:
        """Settings that describe the run (e.g. the FID protocol), logged once."""

    def checkpoint(self, step: int, path: Path) -> None:
        """A checkpoint of the stage at ``step`` was written to ``path``."""

    def artifact(self, step: int, path: Path) -> None:
        """A file worth keeping was written (a sample grid, a config)."""

    def should_stop(self) -> bool:
        """True asks the trainer to end the stage now (after a checkpoint)."""

    def finish(self, status: str, cost: dict[str, float] | None = None) -> None:
        """The stage ended: ``status`` ``FINISHED``, ``FAILED`` or ``KILLED`` (stopped on request); ``cost``: its
        cost metrics (``cost/wall_seconds``, ``cost/train_tflops``, ...) when it finished, else None."""


class NullReporter:
    """Reports nowhere and never stops the run."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def params(self, values: dict[str, str | int | float]) -> None:
        pass

    def checkpoint(self, step: int, path: Path) -> None:
        pass

    def artifact(self, step: int, path: Path) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def finish(self, status: str, cost: dict[str, float] | None = None) -> None:
        pass


class JsonlReporter(NullReporter):
    """Appends one JSON object per report to a file: ``{"time", "step", "kind", ...}``. Survives restarts.

    Checkpoint and artifact paths are written relative to the file's folder (the stage run: they move with it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict) -> None:
        append_jsonl(self.path, {"time": time.time(), **record})

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._write({"step": step, "kind": "metrics", "values": values})

    def params(self, values: dict[str, str | int | float]) -> None:
        self._write({"step": 0, "kind": "params", "values": values})

    def checkpoint(self, step: int, path: Path) -> None:
        self._write({"step": step, "kind": "checkpoint", "path": relative_path(path, self.path.parent)})

    def artifact(self, step: int, path: Path) -> None:
        self._write({"step": step, "kind": "artifact", "path": relative_path(path, self.path.parent)})


class MultiReporter(NullReporter):
    """Fans every report out to several reporters; stops when any of them asks to."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for r in self.reporters:
            r.metrics(step, values)

    def params(self, values: dict[str, str | int | float]) -> None:
        for r in self.reporters:
            r.params(values)

    def checkpoint(self, step: int, path: Path) -> None:
        for r in self.reporters:
            r.checkpoint(step, path)

    def artifact(self, step: int, path: Path) -> None:
        for r in self.reporters:
            r.artifact(step, path)

    def should_stop(self) -> bool:
        return any(r.should_stop() for r in self.reporters)

    def finish(self, status: str, cost: dict[str, float] | None = None) -> None:
        for r in self.reporters:
            r.finish(status, cost)


def read_jsonl_metrics(path: Path) -> list[tuple[int, dict[str, float]]]:
    """The ``(step, values)`` metric records of a :class:`JsonlReporter` file, in order."""
    return [(rec["step"], rec["values"]) for rec in read_jsonl(path) if rec.get("kind") == "metrics"]
