"""Pre-trainings shared by prefix: which line of a pre-training run serves each length a trial asks for.

A pre-training whose first n steps do not depend on its length (``sweepspec.identity.pretrain_length_shared``) is one
run for every length: its state at step n *is* the n-step pre-training, bit for bit (data order, noise and masks come
from step-indexed generators that the checkpoints carry). So a sweep asking for 20k, 40k, 60k and 80k steps trains
one 80k run and keeps its states at the four lengths ("milestones"). A later sweep extends the run from its newest
checkpoint, or is served from a kept milestone.

A run is a *line* of checkpoints in one directory. When a length is asked for that a line has already passed without
keeping it, a *branch* line starts from the line's newest milestone below that length (its full state: weights,
optimizer, generators) and trains the rest of the way: the same steps, trained again, but only from there.

:func:`plan_lines` decides, from what is on disk, the cheapest way to serve every asked length: the fewest steps to
train, each line extended at most once. It is pure (no training, no ray): ``plan`` prints it, ``run`` executes it.

Processes that need lengths of a run while another one trains it (two sweeps on one results root) say so in the run's
``asks/`` (:class:`Asking`), and the training process keeps every asked length it passes (:class:`KeptLengths`): asks
of 30 and 40 steps made at once train one line to 40 that keeps 30, not a line to 40 and then a branch to 30.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..files import write_json
from ..layout import StageRun, SweepDir, step_of
from ..lines import MAIN, Line, branch_name, line_named, lines_of, unit_name
from ..trainer.checkpoint import list_checkpoints

if TYPE_CHECKING:
    from ..sweepspec.expand import SweepPlan


@dataclass(frozen=True)
class LineState:
    """One line of a pre-training run as found on disk.

    ``head``: its newest step with a checkpoint (0: nothing trained); ``kept``: its milestones (lengths it serves).
    """

    name: str  # "main", or the branch's directory name
    path: Path
    head: int
    kept: tuple[int, ...]

    @classmethod
    def read(cls, line: Line) -> LineState:
        steps = [step for step in map(step_of, list_checkpoints(line.checkpoints)) if step is not None]
        kept = tuple(line.kept())
        return cls(line.name, line.path, max(steps + list(kept), default=0), kept)


@dataclass
class LineJob:
    """Training one line of pre-training ``key`` from ``start`` to ``target``, keeping ``milestones``.

    ``branch_from``: for a new branch line, the line name and step of the milestone it starts from (None: the line
    exists, or is the main line from scratch).
    """

    key: str
    line: str
    path: Path
    start: int
    target: int
    milestones: list[int] = field(default_factory=list)
    branch_from: tuple[str, int] | None = None

    @property
    def unit(self) -> str:
        """Its name as a unit of work (a Tune trial of the first phase): the key, plus the branch for a branch."""
        return unit_name(self.key, self.line)

    @property
    def steps_to_train(self) -> int:
        return self.target - self.start


@dataclass(frozen=True)
class Serving:
    """How one asked length is served: from a milestone already ``kept``, or by a ``train`` job (its unit)."""

    length: int
    how: Literal["kept", "train"]
    line: str
    unit: str | None = None
    from_step: int = 0  # where the training that produces it starts (0: from scratch)


def read_lines(layout: SweepDir, key: str) -> list[LineState]:
    """Every line of pre-training ``key`` (the main line first, present even when nothing is on disk)."""
    return [LineState.read(line) for line in lines_of(layout, key)]


def plan_lines(
    layout: SweepDir, key: str, asked: list[int], lines: list[LineState] | None = None
) -> tuple[list[LineJob], dict[int, Serving]]:
    """The jobs that serve every length in ``asked`` of pre-training ``key``, and how each length is served.

    Lengths are taken shortest first; each is served by whichever costs the fewest new steps: a kept milestone (0);
    riding on a job already planned that passes it, or extending that job; extending an idle line whose head is at or
    below it; or a new branch from the newest milestone below it (from scratch when there is none).
    """
    lines = read_lines(layout, key) if lines is None else lines
    jobs: list[LineJob] = []
    serving: dict[int, Serving] = {}
    for length in sorted(set(asked)):
        keeper = next((line for line in lines if length in line.kept), None)
        if keeper is not None:
            serving[length] = Serving(length, "kept", keeper.name)
            continue
        job = _cheapest_job(layout, key, length, lines, jobs)
        job.target = max(job.target, length)
        job.milestones.append(length)
        if job not in jobs:
            jobs.append(job)
        serving[length] = Serving(length, "train", job.line, job.unit, job.start)
    for job in jobs:  # the end of a line is always kept: the next extension or branch starts there
        if job.target not in job.milestones:
            job.milestones.append(job.target)
    return jobs, serving


def _cheapest_job(layout: SweepDir, key: str, length: int, lines: list[LineState], jobs: list[LineJob]) -> LineJob:
    # (new steps, preference, job): ties go to planned jobs, then existing lines, then new branches
    options: list[tuple[int, int, LineJob]] = []
    for job in jobs:
        if job.start <= length:
            options.append((max(0, length - job.target), 0, job))
    busy = {job.line for job in jobs}
    for line in lines:
        if line.name not in busy and line.head <= length:
            options.append((length - line.head, 1, LineJob(key, line.name, line.path, line.head, line.head)))
    below = [(step, line.name) for line in lines for step in line.kept if step < length]
    start, parent = max(below) if below else (0, MAIN)
    name = branch_name(start, length)
    options.append(
        (
            length - start,
            2,
            LineJob(
                key,
                name,
                line_named(layout, key, name).path,
                start,
                start,
                branch_from=(parent, start) if start else None,
            ),
        )
    )
    return min(options, key=lambda o: (o[0], o[1]))[2]


class Asking:
    """``with Asking(layout, key, lengths):`` the lengths this process needs of pre-training ``key``, asked where
    a process training any line of it sees them (one file each under the run's ``asks/``, removed on exit)."""

    def __init__(self, layout: SweepDir, key: str, lengths: Iterable[int]):
        token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.files = [layout.pretrain(key).ask(n, token) for n in sorted(set(lengths))]

    def __enter__(self) -> Asking:
        for path in self.files:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        return self

    def __exit__(self, *exc) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


class KeptLengths:
    """The lengths a training line keeps: its ``planned`` milestones, and every length asked of its run (``main``:
    the run's main line, which holds the asks) by the time the line reaches it. The trainer's ``fit(milestones=...)``
    only asks ``step in`` it; the asks are re-read at most every ``refresh`` seconds."""

    def __init__(self, main: StageRun, planned: Iterable[int], refresh: float = 1.0):
        self.main, self.planned, self.refresh = main, frozenset(planned), refresh
        self._asked: set[int] = set()
        self._read_at = -float("inf")

    def __contains__(self, step: object) -> bool:
        if step in self.planned:
            return True
        if time.monotonic() - self._read_at >= self.refresh:
            self._asked |= self.main.asked_steps()  # only grows: an ask withdrawn meanwhile is kept all the same
            self._read_at = time.monotonic()
        return step in self._asked

    def now(self) -> frozenset[int]:
        """The lengths known now, fixed (for data-parallel ranks, which must all save at the same steps)."""
        return self.planned | self.main.asked_steps()


def asks_of(plan: SweepPlan) -> ExitStack:
    """The lengths of shared pre-trainings that ``plan`` needs and no line keeps yet, asked for as long as the
    returned stack is open: a sweep started beside this one that trains one of those runs keeps them on its way,
    instead of this sweep branching off the run afterwards."""
    stack = ExitStack()
    for key, pre in plan.pretrains.items():
        missing = [n for n in pre.asked if plan.milestone(key, n) is None]
        if missing:
            stack.enter_context(Asking(plan.layout, key, missing))
    return stack
