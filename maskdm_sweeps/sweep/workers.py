"""A stage run on several data-parallel workers: Ray Train's ``TorchTrainer``, launched from the Tune trial.

This is Ray's documented Train-inside-Tune pattern (Ray Train V2): the Tune trial is a light driver that starts a
``TorchTrainer`` and waits; the trainer places ``resources.workers`` workers (each with ``resources.gpus`` GPUs and
``resources.cpus`` CPUs, anywhere in the cluster), sets up the process group (NCCL on GPUs, gloo on CPUs) and runs
:func:`_stage_worker` on every one of them. Each worker calls the shared trainer's ``fit``, which trains its rows of
the global batch under DDP (:mod:`maskdm_sweeps.trainer.parallel`).

* Metrics: every rank reports the same metrics at the same steps through ``ray.train.report`` (a barrier);
  ``TuneReportCallback`` hands rank 0's to the Tune trial, so ASHA and the live table see them as for one worker.
  Rank 0 alone also writes ``metrics.jsonl`` and the MLflow run.
* Failures: when a worker dies, Ray Train restarts the whole group (``FailureConfig(max_failures)``) and every
  rank resumes from the newest checkpoint in the stage directory (written by rank 0). Nothing is checkpointed through
  Ray: the stage directory is the one source of truth, as for one worker.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..layout import StageRun
from ..sweepspec.expand import TrialPlan
from ..trainer import list_checkpoints
from .context import SweepContext
from .events import append_event
from .notices import capture_notices
from .stage import limit_threads, train_stage

PROCESS_GROUP_TIMEOUT_S = 4 * 3600  # the other ranks wait in a collective while rank 0 computes a (10k-sample) FID


@dataclass
class StageJob:
    """What every worker of one stage run needs (shipped to the workers in ``train_loop_config``)."""

    ctx: SweepContext
    trial: TrialPlan
    stage: str
    stage_dir: Path
    init: Path | None
    key: str
    milestones: tuple[int, ...] = ()  # a pre-training line's lengths to keep


def run_stage_on_workers(job: StageJob) -> None:
    """Train one stage run on ``resources.workers`` Ray Train workers; returns when rank 0 has written its result.

    Raises what ``TorchTrainer.fit`` raises once the group has failed more than ``resources.max_failures`` times.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = job.ctx.plan.spec.resources
    per_worker = {"CPU": r.cpus, **({"GPU": r.gpus} if r.gpus else {})}
    trainer = TorchTrainer(
        _stage_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if r.gpus else "gloo", timeout_s=PROCESS_GROUP_TIMEOUT_S),
        scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            # one Train run per attempt of the Tune trial: a retried trial starts a fresh group, which resumes from
            # the stage directory's checkpoints (Train's own run state holds nothing we need)
            name=f"{job.stage}-{job.key[:16]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(job.ctx.plan.sweep_dir / "tune" / "train"),  # beside Tune's own state
            failure_config=FailureConfig(max_failures=r.max_failures),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # Ray Train's: typed apart from Tune's
        ),
    )
    trainer.fit()


def _stage_worker(config: dict) -> None:
    """One rank of a stage run (runs inside a Ray Train worker, the process group already set up)."""
    import ray.train
    import torch

    job: StageJob = config["job"]
    ctx, trial, stage = job.ctx, job.trial, job.stage
    rank = ray.train.get_context().get_world_rank()
    limit_threads(ctx)
    if ctx.plan.spec.resources.gpus:
        torch.cuda.set_device(ray.train.torch.get_device())  # "cuda" below then means this worker's GPU
    if rank == 0:
        newest = list_checkpoints(StageRun(job.stage_dir).checkpoints)
        append_event(
            ctx.plan.sweep_dir,
            "worker_group_start",
            stage=stage,
            trial_id=trial.trial_id,
            key=job.key,
            workers=ctx.plan.spec.resources.workers,
            pid=os.getpid(),
            newest_checkpoint=newest[-1].name if newest else None,
        )
    with capture_notices(ctx.plan.sweep_dir, job.key if rank == 0 else f"{job.key} (rank {rank})"):
        train_stage(
            ctx,
            trial,
            stage,
            job.stage_dir,
            job.init,
            rank,
            report=ray.train.report,
            milestones=job.milestones,
            key=job.key,
        )
