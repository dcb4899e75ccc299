"""The Ray Tune side of a trial: a function trainable that runs stage runs through the shared trainer.

Only ``ray.tune.*`` is used inside (``ray.train.report`` fails a plain Tune trial). Nothing is checkpointed
through Tune: a retried or resumed trial starts its function again, and each stage run resumes from the newest
checkpoint in its own directory. (Tune checkpoints only added a way to fail: a restore from one that Tune had already
rotated away errored the trial on resume.)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..layout import StageRun, read_json, write_json
from ..sweepspec.expand import TrialPlan
from ..trainer import TrainingDiverged, load_latest_checkpoint
from .context import SweepContext
from .events import append_event
from .interrupt import StageInterrupted
from .stage import limit_threads, train_stage
from .workers import StageJob, run_stage_on_workers

def run_stage(ctx: SweepContext, trial: TrialPlan, stage: str, stage_dir: Path, init: Path | None,
              key: str) -> Path:
    """Run (or resume, or skip when finished) one stage run; returns its final checkpoint.

    One worker trains in this process; several (``resources.workers > 1``) in a Ray Train group (see ``workers``).
    """
    run = StageRun(stage_dir)
    if run.finished():
        return Path(read_json(run.result)["checkpoint"])
    if run.diverged.exists():  # training is deterministic: a retry would diverge at the same step
        raise TrainingDiverged((read_json(run.diverged) or {}).get("error", "the loss diverged"))
    sweep_dir = ctx.plan.sweep_dir
    resumed = load_latest_checkpoint(run.checkpoints)
    append_event(sweep_dir, "stage_start", stage=stage, trial_id=trial.trial_id, key=key,
                 from_step=resumed[0]["step"] if resumed else 0, pid=os.getpid())
    try:
        if ctx.plan.spec.resources.workers > 1:
            run_stage_on_workers(StageJob(ctx, trial, stage, stage_dir, init, key))
            result = read_json(run.result)  # written by rank 0
        else:
            result = train_stage(ctx, trial, stage, stage_dir, init).to_json()
    except StageInterrupted as stop:
        append_event(sweep_dir, "stage_interrupted", stage=stage, trial_id=trial.trial_id, key=key, step=stop.step)
        raise
    except Exception as err:
        if isinstance(err, TrainingDiverged):
            write_json(run.diverged, {"error": str(err)})
        append_event(sweep_dir, "stage_error", stage=stage, trial_id=trial.trial_id, key=key,
                     error=f"{type(err).__name__}: {err}"[:500])
        raise
    _stage_done(ctx, trial, stage, key, result)
    return Path(result["checkpoint"])


def _stage_done(ctx: SweepContext, trial: TrialPlan, stage: str, key: str, result: dict) -> None:
    import ray

    append_event(ctx.plan.sweep_dir, "stage_done", stage=stage, trial_id=trial.trial_id, key=key,
                 steps=result["steps"], fid=result["fid"], node_id=ray.get_runtime_context().get_node_id(),
                 stopped_early=result["stopped_early"], workers=result.get("workers", 1))


def pretrain_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """One shared pre-training per key."""
    limit_threads(ctx)
    plan = ctx.plan
    pre = plan.pretrains[params["pretrain_key"]]
    trial = ctx.trials[pre.trial_ids[0]]
    run_stage(ctx, trial, "pretrain", plan.pretrain_dir(pre.key), None, pre.key)


def first_phase_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """Phase 1: a shared pre-training (``unit``: its key) or, side by side with them, a trial that needs none
    (``unit``: its trial id; the baseline), so that no worker idles while the pre-trainings run."""
    unit = params["unit"]
    if unit in ctx.plan.pretrains:
        with _stops_quietly():
            pretrain_trainable({"pretrain_key": unit}, ctx)
    else:
        trial_trainable({"trial_id": unit}, ctx)


@contextmanager
def _stops_quietly():
    """A stage stopped on request ends its Tune trial normally: no error, so no retry (``resume`` continues it)."""
    try:
        yield
    except StageInterrupted:
        pass


def trial_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """Phase 2: a trial's fine-tuning, from its (usually already finished) pre-training."""
    limit_threads(ctx)
    plan = ctx.plan
    trial = ctx.trial_for(params)
    layout = plan.layout
    layout.trial_dir(trial.trial_id).mkdir(parents=True, exist_ok=True)
    write_json(layout.manifest(trial.trial_id), trial.manifest(plan.spec.resources))  # what results/ reads
    with _stops_quietly():
        init = None
        if trial.pretrain_key:
            init = run_stage(ctx, trial, "pretrain", plan.pretrain_dir(trial.pretrain_key), None, trial.pretrain_key)
        run_stage(ctx, trial, "finetune", layout.finetune(trial.trial_id).path, init, trial.trial_id)
