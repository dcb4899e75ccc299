"""What a trial's pre-training cost: the line of its run that keeps its length, the stretches behind that state, and
each trial's share of the stretches a sweep trained (see :mod:`.collect` for the two conventions of cost)."""

from __future__ import annotations

import math
from pathlib import Path

from ..files import read_json
from ..layout import SweepDir
from ..lines import Line, keeping_line, line_at, main_line


def _line_cost(line: Line, step: int) -> tuple[float, float, float]:
    """``(train TFLOPs, eval TFLOPs, wall seconds)`` of reaching ``step`` on ``line`` (0 at step 0): its milestone
    record, or the parent's at a branch's starting step. NaN when not recorded."""
    if step == 0:
        return 0.0, 0.0, 0.0
    info = read_json(line.milestone_info(step))
    if info is None:
        origin = line.origin()
        if origin is not None and origin[1] == step:
            return _line_cost(origin[0], step)
        return math.nan, math.nan, math.nan
    return tuple(math.nan if info.get(k) is None else float(info[k])  # type: ignore[return-value]
                 for k in ("train_tflops", "eval_tflops", "wall_seconds"))


class Pretraining:
    """What a trial's pre-training is on disk: the line that keeps its length (None before it is kept), its
    stretches, what reaching that length cost, and the run directory to read its metrics from."""

    def __init__(self, layout: SweepDir, key: str, steps: int):
        self.key, self.steps = key, steps
        self.line = keeping_line(layout, key, steps)
        self.stretches = self.line.stretches(steps) if self.line is not None else []
        self.cost = _line_cost(self.line, steps) if self.line is not None else (math.nan,) * 3
        self.run = self.line or main_line(layout, key)  # where its metrics are (the main line until one keeps it)

    @property
    def unit(self) -> str | None:
        """The line's unit name (``key`` or ``key/<branch>``), as events and Tune units name it."""
        return None if self.line is None else self.line.unit


def shares_of(pretrainings: dict[str, Pretraining]) -> dict[str, tuple[float, float]]:
    """trial id -> ``(train TFLOPs, wall seconds)`` of its share of the pre-training stretches: each elementary stretch
    of a line is split evenly over the trials that need it, so the shares add up to what was trained, each stretch
    once."""
    cuts: dict[Path, set[int]] = {}
    lines: dict[Path, Line] = {}
    for pre in pretrainings.values():
        for line, start, end in pre.stretches:
            cuts.setdefault(line, set()).update((start, end))
            lines[line] = line_at(line, pre.key)
    shares = {tid: [0.0, 0.0] for tid in pretrainings}
    for line, unsorted in cuts.items():
        points = sorted(unsorted)
        for a, b in zip(points, points[1:]):
            users = [tid for tid, pre in pretrainings.items()
                     if any(path == line and start <= a and b <= end for path, start, end in pre.stretches)]
            (train_a, _, wall_a), (train_b, _, wall_b) = _line_cost(lines[line], a), _line_cost(lines[line], b)
            for tid in users:
                shares[tid][0] += (train_b - train_a) / len(users)
                shares[tid][1] += (wall_b - wall_a) / len(users)
    return {tid: (train, wall) for tid, (train, wall) in shares.items()}


