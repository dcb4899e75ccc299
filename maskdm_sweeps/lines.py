"""The pre-training line: one owner for what a line of a shared pre-training run is (standard library only).

A pre-training run ``key`` (``<results root>/_pretrain/<key>/``, :meth:`~maskdm_sweeps.layout.SweepDir.pretrain`)
is one or more *lines* of checkpoints: its main line, in the run's own directory, and its branches, each in
``branches/<name>/``, started from a kept state of another line (``branch.json``: the line and the step). A line
keeps the lengths asked of it in ``milestones/`` (:meth:`~maskdm_sweeps.layout.StageRun.milestone`).

Here, and nowhere else: a line's name (``main``, or its branch's ``from-<start>-to-<target>``), its unit name (the key,
or ``<key>/<branch>``: what Tune units, events and MLflow tags call it), its kept milestones, its origin, and the
stretches of training behind a state of it (the branch's, then its parent's, down to the main line from step 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .files import read_json, write_json
from .layout import BRANCHES_DIR, StageRun, SweepDir, relative_path

MAIN = "main"

Stretch = tuple[Path, int, int]  # (line directory, from step, to step): a part of one line behind a state


def branch_name(start: int, target: int) -> str:
    """The name of a branch line that starts from a kept state at ``start`` and trains to ``target``."""
    return f"from-{start}-to-{target}"


def unit_name(key: str, line: str) -> str:
    """A line's name as a unit of work: the key for the main line, ``<key>/<branch>`` for a branch."""
    return key if line == MAIN else f"{key}/{line}"


def unit_key(unit: str) -> str:
    """The pre-training key of a line's unit name (a unit that is not a line, a trial id, is returned as it is)."""
    return unit.split("/", 1)[0]


def unit_line(unit: str) -> str:
    """The line name of a line's unit name: ``main``, or the branch's name."""
    return unit.split("/", 1)[1] if "/" in unit else MAIN


@dataclass(frozen=True)
class Line(StageRun):
    """One line of pre-training run ``key``: a stage run (its ``path``) with its run's key and its own name."""

    key: str = ""
    name: str = MAIN

    @property
    def unit(self) -> str:
        """Its name as a unit of work (a Tune trial of the first phase, an event's ``key``, an MLflow tag)."""
        return unit_name(self.key, self.name)

    def kept(self) -> list[int]:
        """The lengths this line keeps (a state and its record in ``milestones/``), ascending."""
        return self.milestone_steps()

    def origin(self) -> tuple[Line, int] | None:
        """For a branch line: the line it started from and the step (a milestone of that line); None otherwise."""
        record = read_json(self.branch)
        if not isinstance(record, dict):
            return None
        parent = Path(record["parent"])
        main_dir = self.path.parent.parent  # <key>/branches/<name>
        if parent.is_absolute():  # written before paths were relative: the main line or a branch of the same key
            parent = main_dir if parent.name == main_dir.name else main_dir / BRANCHES_DIR / parent.name
        parent = Path(os.path.normpath(self.path / parent))
        return Line(parent, self.key, MAIN if parent == Path(os.path.normpath(main_dir)) else parent.name), int(
            record["from_step"]
        )

    def start_from(self, parent: Line, step: int) -> None:
        """Record that this branch line starts from ``parent``'s kept state at ``step`` (read by :meth:`origin`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.branch, {"parent": relative_path(parent.path, self.path), "from_step": step})

    def stretches(self, end: int) -> list[Stretch]:
        """The stretches of training behind this line's state at step ``end``, oldest first: a branch's start on its
        parent (recursively), then its own."""
        origin = self.origin()
        if origin is None:
            return [(self.path, 0, end)]
        parent, step = origin
        return parent.stretches(step) + [(self.path, step, end)]


def main_line(layout: SweepDir, key: str) -> Line:
    """The main line of pre-training ``key`` (whose directory also holds the run's asks)."""
    return Line(layout.pretrain(key).path, key, MAIN)


def line_named(layout: SweepDir, key: str, name: str) -> Line:
    """The line ``name`` (``main`` or a branch's name) of pre-training ``key``, on disk or not."""
    if name == MAIN:
        return main_line(layout, key)
    return Line(layout.pretrain(key).path / BRANCHES_DIR / name, key, name)


def line_at(stage_dir: Path, key: str) -> Line:
    """The line of pre-training ``key`` whose directory is ``stage_dir`` (the run's own, or a branch's)."""
    stage_dir = Path(stage_dir)
    return Line(stage_dir, key, MAIN if stage_dir.name == key else stage_dir.name)


def lines_of(layout: SweepDir, key: str) -> list[Line]:
    """Every line of pre-training ``key`` on disk: the main line first (present even when nothing is on disk), then
    its branches by name."""
    main = main_line(layout, key)
    branches = main.path / BRANCHES_DIR
    found = sorted(d.name for d in branches.iterdir() if d.is_dir()) if branches.is_dir() else []
    return [main] + [line_named(layout, key, name) for name in found]


def keeping_line(layout: SweepDir, key: str, step: int) -> Line | None:
    """The line of pre-training ``key`` that keeps a state at ``step`` (the main line first), or None."""
    return next((line for line in lines_of(layout, key) if step in line.kept()), None)
