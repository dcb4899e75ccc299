"""Arms stopped once clearly behind (``sweep.stop_behind``): a Tune stopper in the driver that pauses an arm's
fine-tunings at an evaluation where the arm is worse than the baseline at equal training compute.

At an evaluation step every seed of the arm in the round's design has reached (at least 2 seeds), the arm's FIDs are
compared with each finished baseline seed's FID interpolated at the arm's mean training compute there (its whole
pre-training included): "behind" is :func:`~maskdm_sweeps.results.analysis.clearly_lower` the other way round (every
arm seed worse than every baseline seed, and the means apart by more than twice the evaluation noise). Nothing is
stopped on one seed's value. A stopped trial keeps its checkpoints and a ``stopped_behind.json`` marker; the group is
recorded in ``rounds.json`` with the budget it was stopped under, and continues when that budget is raised.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from ray.tune import Stopper

from ..files import write_json
from ..results.analysis import clearly_lower
from ..sweepspec.expand import SweepPlan, TrialPlan
from ..trainer.compute import TERA, stage_flops, train_flops_per_step
from .events import append_event
from .rounds import RoundsState, budget_of, group_of


def training_tflops_at(trial: TrialPlan, step: int) -> float:
    """A trial's training TFLOPs at fine-tuning ``step``: its whole pre-training plus ``step`` fine-tuning steps
    (exact counts, as ``curves.parquet``'s points are costed)."""
    pretrain = stage_flops(trial.config, "pretrain", trial.config.pretrain.steps)[0] if trial.pretrain_key else 0
    return (pretrain + step * train_flops_per_step(trial.config, "finetune")) / TERA


def baseline_of(plan: SweepPlan) -> dict[str, str]:
    """arm group -> the group of the baseline it is compared with (equal in every setting the baseline keeps)."""
    bases = {group_of(t): t.assignments for t in plan.trials if t.is_baseline}
    out = {}
    for t in plan.trials:
        if t.is_baseline:
            continue
        for group, kept in bases.items():
            if all(t.assignments.get(k) == v for k, v in kept.items() if k not in ("baseline", "seed")):
                out[group_of(t)] = group
                break
    return out


class BehindStopper(Stopper):
    """A Ray Tune stopper (``tune.RunConfig(stop=...)``): ``__call__(trial_id, result)`` is True for the trials of an
    arm found clearly behind. Driver-side only; it reads each reported ``eval/fid`` with its ``eval/step``."""

    def __init__(
        self,
        plan: SweepPlan,
        state: RoundsState,
        design: list[TrialPlan],
        points: pd.DataFrame,
        noise_std: float,
        round_number: int,
    ):
        """``points``: FID points of the finished trials (``results.analysis.fid_points``: trial_id, step, fid,
        tflops); ``noise_std``: the evaluation noise (NaN counts as 0)."""
        self.plan, self.state, self.round = plan, state, round_number
        self.noise = 0.0 if math.isnan(noise_std) else noise_std
        self.trials = {t.trial_id: t for t in design}
        self.members: dict[str, list[str]] = {}
        for t in design:
            if not t.is_baseline:
                self.members.setdefault(group_of(t), []).append(t.trial_id)
        self.base_group = baseline_of(plan)
        self.fid: dict[str, dict[int, float]] = {}  # trial id -> step -> FID, finished trials and live reports
        for tid, pts in points.groupby("trial_id"):
            self.fid[str(tid)] = dict(zip(pts["step"].astype(int), pts["fid"].astype(float), strict=True))
        self.base_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        by_id = {t.trial_id: t for t in plan.trials}
        for tid, pts in points.groupby("trial_id"):
            base = by_id.get(str(tid))
            if base is not None and base.is_baseline:
                pts = pts.sort_values("tflops")
                curve = (pts["tflops"].to_numpy(float), pts["fid"].to_numpy(float))
                self.base_curves.setdefault(group_of(base), []).append(curve)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        tid = result.get("maskdm_trial")
        if result.get("stage") != "finetune" or tid not in self.trials or self.trials[tid].is_baseline:
            return False
        group = group_of(self.trials[tid])
        if "eval/step" in result and "eval/fid" in result and group not in self.state.active_stops():
            self.fid.setdefault(tid, {})[int(result["eval/step"])] = float(result["eval/fid"])
            self._check(group, int(result["eval/step"]))
        stop = self.state.active_stops().get(group)
        # stopped at its first report after the rung: by then the rung's checkpoint is on disk (a trial stopped at
        # the rung's own report could die before saving it, and its continuation would retrain those steps)
        return stop is not None and int(result.get("step", 0)) > stop["step"]

    def stop_all(self) -> bool:
        return False

    def _check(self, group: str, step: int) -> None:
        """Stop ``group`` when, at evaluation ``step``, every seed of it is clearly behind the baseline."""
        if self.state.stopped.get(group, {}).get("continued"):
            return  # continued by a raised budget: the user asked for its whole curve
        members = self.members.get(group, [])
        fids = [self.fid.get(m, {}).get(step) for m in members]
        if len(members) < 2 or any(f is None for f in fids):
            return
        compute = float(np.mean([training_tflops_at(self.trials[m], step) for m in members]))
        curves = self.base_curves.get(self.base_group.get(group, ""), [])
        base = [float(np.interp(compute, c, f)) for c, f in curves if c[0] <= compute <= c[-1]]
        if len(base) < 2 or not clearly_lower(np.array(base), np.array(fids, dtype=float), self.noise):
            return
        self._stop(group, step, compute, members)

    def _stop(self, group: str, step: int, compute: float, members: list[str]) -> None:
        budget = budget_of(self.plan)
        unfinished = [m for m in members if not self.plan.trial_finished(m)]
        self.state.stopped[group] = {
            "round": self.round,
            "step": step,
            "tflops": compute,
            "budget": None if budget is None else budget[0],
            "steps": dict.fromkeys(unfinished, step),
        }
        for m in unfinished:
            run = self.plan.layout.finetune(m)
            run.path.mkdir(parents=True, exist_ok=True)
            write_json(run.stopped_behind, {"step": step, "tflops": compute, "round": self.round})
        self.state.save(self.plan)
        append_event(self.plan.sweep_dir, "stopped_behind", group=group, step=step, tflops=compute)
