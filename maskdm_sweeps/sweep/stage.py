"""One rank's part of a stage run: the shared trainer's ``fit`` with the sweep's reporters, outcome and cost.

Used alike by a trial that trains in its own process (one worker) and by every Ray Train worker of a data-parallel
stage run. Only ``ray.tune.*`` is used here: ``ray.train.report`` fails a plain Tune trial (a Ray Train worker passes
its own ``report``).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from pathlib import Path

from ray import tune

from ..layout import StageRun
from ..sweepspec.expand import TrialPlan
from ..trainer import JsonlReporter, MultiReporter, NullReporter, Reporter, StageResult, fit
from .context import SweepContext
from .interrupt import StageInterrupted, StopRequestReporter


class TuneReporter(NullReporter):
    """Trainer reports -> ``tune.report`` (or, in a Ray Train worker, ``ray.train.report``, which a callback hands
    to Tune); the training step is the time ASHA sees."""

    def __init__(self, trial_id: str, stage: str, report: Callable[[dict], None] | None = None, key: str = ""):
        self.trial_id, self.stage, self.key = trial_id, stage, key or trial_id
        self.report = report or tune.report
        self.latest: dict[str, float] = {}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.latest.update(values)
        if "eval/fid" in values:  # the step of the FID the report carries (later reports repeat the latest one)
            self.latest["eval/step"] = step
        self.report(
            {**self.latest, "step": step, "stage": self.stage, "maskdm_trial": self.trial_id, "maskdm_key": self.key}
        )  # the stage run: the trial id, or a pre-training line's unit


def stage_cost(resources, result: StageResult) -> dict[str, float]:
    """The cost metrics of a finished stage run: wall seconds, device-hours and GPU-hours (0 on a CPU), by the
    spec's billing rule (``ResourcesConfig.gpus_billed`` / ``devices_billed``), as ``trials.parquet`` counts them;
    and its compute in TFLOPs (training and evaluation apart), counted from the config by the trainer."""
    wall_seconds = result.wall_seconds
    return {
        "cost/wall_seconds": wall_seconds,
        "cost/device_hours": wall_seconds * resources.devices_billed / 3600.0,
        "cost/gpu_hours": wall_seconds * resources.gpus_billed / 3600.0,
        "cost/train_tflops": result.train_tflops,
        "cost/eval_tflops": result.eval_tflops,
    }


def train_stage(
    ctx: SweepContext,
    trial: TrialPlan,
    stage: str,
    stage_dir: Path,
    init: Path | None,
    rank: int = 0,
    report: Callable[[dict], None] | None = None,
    milestones: Container[int] = (),
    key: str = "",
) -> StageResult:
    """One rank's part of a stage run through the shared trainer (rank 0 of one: the whole run).

    Every rank reports to the context's ``rank_reporters`` first (see :func:`~maskdm_sweeps.sweep.run_sweep`), then
    to Tune (``report``: ``tune.report`` by default); rank 0 also writes ``metrics.jsonl`` and the extra reporters'
    runs (MLflow), which it closes with the outcome and the cost.
    """
    reporters: list[Reporter] = ctx.rank_reporters(trial, stage, stage_dir, rank) if ctx.rank_reporters else []
    reporters.append(TuneReporter(trial.trial_id, stage, report, key))
    if rank == 0:
        # metrics.jsonl beside the checkpoints: the local record results/ reads (a resumed stage appends; the last
        # record of a step wins)
        reporters.append(JsonlReporter(StageRun(stage_dir).metrics))
        if ctx.extra_reporters:
            reporters += ctx.extra_reporters(trial, stage, stage_dir)
        reporters.append(StopRequestReporter(ctx.plan.layout, stage))  # last: the others see the checkpoint first
    try:
        result = fit(
            trial.config, stage, stage_dir, MultiReporter(*reporters), init_checkpoint=init, milestones=milestones
        )
    except StageInterrupted:
        finish_reporters(reporters, "KILLED")
        raise
    except Exception:
        finish_reporters(reporters, "FAILED")
        raise
    finish_reporters(reporters, "FINISHED", stage_cost(ctx.plan.spec.resources, result))
    return result


def limit_threads(ctx: SweepContext) -> None:
    """As many torch threads as the trial has CPUs: packed trials must not fight over cores."""
    import torch

    torch.set_num_threads(max(1, int(ctx.plan.spec.resources.cpus)))


def finish_reporters(reporters: list[Reporter], status: str, cost: dict[str, float] | None = None) -> None:
    """Tell every reporter how the stage ended (those that hold a run, MLflow's, close it)."""
    for r in reporters:
        r.finish(status, cost)
