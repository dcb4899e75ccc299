"""The Ray Tune side of a trial: a function trainable that runs stage runs through the shared trainer.

Only ``ray.tune.*`` is used inside (DESIGN.md: ``ray.train.report`` fails a Tune trial). Nothing is checkpointed
through Tune: a retried or resumed trial starts its function again, and each stage run resumes from the newest
checkpoint in its own directory. (Tune checkpoints only added a way to fail: a restore from one that Tune had already
rotated away errored the trial on resume.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray import tune

from ..spec.expand import SweepPlan, TrialPlan, set_dotted
from ..trainer import (InjectedFault, JsonlReporter, MultiReporter, NullReporter, Reporter, StageResult, fit,
                       load_latest_checkpoint)
from ..trainer.config import TrialConfig
from .events import append_event

# test-only: "<stage>:<step>[:<rank>]" in <sweep dir>/test-fault kills each such stage run once (rank 0 by default)
FAULT_FILE = "test-fault"


class TuneReporter(NullReporter):
    """Trainer reports -> ``tune.report`` (or, in a Ray Train worker, ``ray.train.report``, which a callback hands
    to Tune); the training step is the time ASHA sees."""

    def __init__(self, trial_id: str, stage: str, report: Callable[[dict], None] | None = None):
        self.trial_id, self.stage = trial_id, stage
        self.report = report or tune.report
        self.latest: dict[str, float] = {}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.latest.update(values)
        self.report({**self.latest, "step": step, "stage": self.stage, "maskdm_trial": self.trial_id})


@dataclass
class SweepContext:
    """Everything a trial process needs, shipped once through ``tune.with_parameters``."""

    plan: SweepPlan
    extra_reporters: Callable[[TrialPlan, str, Path], list[Reporter]] | None = None
    trials: dict[str, TrialPlan] = field(init=False)

    def __post_init__(self) -> None:
        self.trials = {t.trial_id: t for t in self.plan.trials}

    def trial_for(self, params: dict[str, Any]) -> TrialPlan:
        """The trial of a Tune config: a planned trial id, plus sampled search values if any."""
        base = self.trials[params["trial_id"]]
        sampled = {k: v for k, v in params.items() if k != "trial_id"}
        if not sampled:
            return base
        data = base.config.model_dump(mode="json")
        for key, value in sampled.items():
            set_dotted(data, key, value)
        config = TrialConfig.model_validate(data)
        pretrain_key = config.stage_hash("pretrain") if config.pretrain.steps > 0 else None
        assignments = {**base.assignments, **sampled}
        label = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in assignments.items())
        return TrialPlan("t-" + config.stage_hash("finetune")[:10], label, assignments, config, pretrain_key)


def fault_for(sweep_dir: Path, stage: str, stage_dir: Path, rank: int = 0) -> int | None:
    """The test-only fault hook: the step at which this rank dies, once per stage directory (a marker file
    remembers it fired)."""
    path = sweep_dir / FAULT_FILE
    if not path.exists() or (stage_dir / ".fault_fired").exists():
        return None
    fault_stage, step, fault_rank = (path.read_text().strip().split(":") + ["0"])[:3]
    return int(step) if fault_stage == stage and int(fault_rank) == rank else None


def stage_cost(resources, wall_seconds: float) -> dict[str, float]:
    """The cost metrics of a finished stage run: wall seconds, and GPU-hours over all of the trial's GPUs (a
    fractional, packed trial is counted as a whole GPU)."""
    gpus = resources.workers * max(1.0, resources.gpus) if resources.gpus else 0.0
    return {"cost/wall_seconds": wall_seconds, "cost/gpu_hours": wall_seconds * gpus / 3600.0}


def run_stage(ctx: SweepContext, trial: TrialPlan, stage: str, stage_dir: Path, init: Path | None,
              key: str) -> Path:
    """Run (or resume, or skip when finished) one stage run; returns its final checkpoint.

    One worker trains in this process; several (``resources.workers > 1``) in a Ray Train group (see ``workers``).
    """
    done = stage_dir / "result.json"
    if done.exists():
        return Path(json.loads(done.read_text())["checkpoint"])
    sweep_dir = ctx.plan.sweep_dir
    resumed = load_latest_checkpoint(stage_dir / "checkpoints")
    append_event(sweep_dir, "stage_start", stage=stage, trial_id=trial.trial_id, key=key,
                 from_step=resumed[0]["step"] if resumed else 0, pid=os.getpid())
    try:
        if ctx.plan.spec.resources.workers > 1:
            from .workers import StageJob, run_stage_on_workers

            run_stage_on_workers(StageJob(ctx, trial, stage, stage_dir, init, key))
            result = json.loads(done.read_text())  # written by rank 0
        else:
            result = train_stage(ctx, trial, stage, stage_dir, init).to_json()
    except Exception as err:
        append_event(sweep_dir, "stage_error", stage=stage, trial_id=trial.trial_id, key=key,
                     error=f"{type(err).__name__}: {err}"[:500])
        raise
    _stage_done(ctx, trial, stage, key, result)
    return Path(result["checkpoint"])


def train_stage(ctx: SweepContext, trial: TrialPlan, stage: str, stage_dir: Path, init: Path | None, rank: int = 0,
                report: Callable[[dict], None] | None = None) -> StageResult:
    """One rank's part of a stage run through the shared trainer (rank 0 of one: the whole run).

    Every rank reports to Tune (``report``: ``tune.report`` by default); rank 0 also writes ``metrics.jsonl`` and
    the extra reporters' runs (MLflow), which it closes with the outcome and the cost.
    """
    reporters: list[Reporter] = [TuneReporter(trial.trial_id, stage, report)]
    if rank == 0:
        # metrics.jsonl beside the checkpoints: the local record results/ reads (a resumed stage appends; the last
        # record of a step wins)
        reporters.append(JsonlReporter(stage_dir / "metrics.jsonl"))
        if ctx.extra_reporters:
            reporters += ctx.extra_reporters(trial, stage, stage_dir)
    fault = fault_for(ctx.plan.sweep_dir, stage, stage_dir, rank)
    try:
        result = fit(trial.config, stage, stage_dir, MultiReporter(*reporters), init_checkpoint=init, fault_at_step=fault)
    except InjectedFault:
        (stage_dir / ".fault_fired").touch()
        os._exit(17)  # a real process death, as a crashed GPU worker would die (Ray Train restarts a group)
    except Exception:
        _finish(reporters, "FAILED")
        raise
    _finish(reporters, "FINISHED", stage_cost(ctx.plan.spec.resources, result.wall_seconds))
    return result


def _stage_done(ctx: SweepContext, trial: TrialPlan, stage: str, key: str, result: dict) -> None:
    import ray

    append_event(ctx.plan.sweep_dir, "stage_done", stage=stage, trial_id=trial.trial_id, key=key,
                 steps=result["steps"], fid=result["fid"], node_id=ray.get_runtime_context().get_node_id(),
                 stopped_early=result["stopped_early"], workers=result.get("workers", 1))


def _limit_threads(ctx: SweepContext) -> None:
    """As many torch threads as the trial has CPUs: packed trials must not fight over cores."""
    import torch

    torch.set_num_threads(max(1, int(ctx.plan.spec.resources.cpus)))


def _finish(reporters: list[Reporter], status: str, cost: dict[str, float] | None = None) -> None:
    """Close the reporters that hold a run (MLflow); the others need nothing."""
    for r in reporters:
        if hasattr(r, "finish"):
            r.finish(status, cost)


def pretrain_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """One shared pre-training per key."""
    _limit_threads(ctx)
    plan = ctx.plan
    pre = plan.pretrains[params["pretrain_key"]]
    trial = ctx.trials[pre.trial_ids[0]]
    run_stage(ctx, trial, "pretrain", plan.pretrain_dir(pre.key), None, pre.key)


def first_phase_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """Phase 1: a shared pre-training (``unit``: its key) or, side by side with them, a trial that needs none
    (``unit``: its trial id; the baseline), so that no worker idles while the pre-trainings run."""
    unit = params["unit"]
    if unit in ctx.plan.pretrains:
        pretrain_trainable({"pretrain_key": unit}, ctx)
    else:
        trial_trainable({"trial_id": unit}, ctx)


def trial_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """Phase 2: a trial's fine-tuning, from its (usually already finished) pre-training."""
    _limit_threads(ctx)
    plan = ctx.plan
    trial = ctx.trial_for(params)
    trial_dir = plan.trial_dir(trial.trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "trial.json").write_text(json.dumps({  # what results/ needs for searched trials too
        "trial_id": trial.trial_id, "label": trial.label, "assignments": trial.assignments,
        "pretrain_key": trial.pretrain_key}, indent=2))
    init = None
    if trial.pretrain_key:
        init = run_stage(ctx, trial, "pretrain", plan.pretrain_dir(trial.pretrain_key), None, trial.pretrain_key)
    run_stage(ctx, trial, "finetune", plan.trial_dir(trial.trial_id) / "finetune", init, trial.trial_id)
