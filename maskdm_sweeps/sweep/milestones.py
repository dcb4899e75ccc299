"""Pre-trainings shared by prefix: which line of a pre-training run serves each length a trial asks for.

A pre-training whose first n steps do not depend on its length (``TrialConfig.pretrain_length_shared``) is one run
for every length: its state at step n *is* the n-step pre-training, bit for bit (data order, noise and masks come
from step-indexed generators that the checkpoints carry). So a sweep asking for 20k, 40k, 60k and 80k steps trains
one 80k run and keeps its states at the four lengths ("milestones"). A later sweep extends the run from its newest
checkpoint, or is served from a kept milestone.

A run is a *line* of checkpoints in one directory. When a length is asked for that a line has already passed without
keeping it, a *branch* line starts from the line's newest milestone below that length (its full state: weights,
optimizer, generators) and trains the rest of the way: the same steps, trained again, but only from there.

:func:`plan_lines` decides, from what is on disk, the cheapest way to serve every asked length: the fewest steps to
train, each line extended at most once. It is pure (no training, no ray): ``plan`` prints it, ``run`` executes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..layout import StageRun, SweepDir
from ..trainer.checkpoint import list_checkpoints

MAIN = "main"


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
    def read(cls, run: StageRun, name: str) -> "LineState":
        steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run.checkpoints)]
        kept = tuple(run.milestone_steps())
        return cls(name, run.path, max(steps + list(kept), default=0), kept)


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
        return self.key if self.line == MAIN else f"{self.key}/{self.line}"

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
    runs = layout.pretrain_lines(key)
    return [LineState.read(runs[0], MAIN)] + [LineState.read(r, r.path.name) for r in runs[1:]]


def branch_name(start: int, target: int) -> str:
    return f"from-{start}-to-{target}"


def plan_lines(layout: SweepDir, key: str, asked: list[int],
               lines: list[LineState] | None = None) -> tuple[list[LineJob], dict[int, Serving]]:
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
    options.append((length - start, 2, LineJob(key, name, layout.pretrain_branch(key, name).path, start, start,
                                               branch_from=(parent, start) if start else None)))
    return min(options, key=lambda o: (o[0], o[1]))[2]
