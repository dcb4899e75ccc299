"""What a plan will cost: exact FLOPs and estimated GPU-hours per stage run, and the totals it still has to run."""

from __future__ import annotations

from dataclasses import dataclass

from ..sweepspec.expand import SweepPlan
from ..sweepspec.identity import with_pretrain_steps
from ..trainer.compute import TERA, stage_flops
from ..trainer.config import Stage, TrialConfig
from .estimate import stage_eval_gpu_hours, stage_gpu_hours
from .milestones import LineJob, Serving, plan_lines


@dataclass(frozen=True)
class StageCost:
    """The compute of one whole stage run: exact FLOPs (``trainer.compute``) and estimated GPU-hours (all the GPUs
    the trial holds, see :func:`stage_cost`)."""

    train_flops: int
    eval_flops: int
    train_gpu_hours: float
    eval_gpu_hours: float


@dataclass
class PlanTotals:
    """What a plan still has to run (finished fine-tunings and kept pre-training lengths left out); FLOPs are exact,
    GPU-hours an estimate on the reference GPU.

    ``pretrain_steps_asked``: the pre-training steps the trials ask for, each trial its own length (what training
    them apart would cost: ``pretrain_asked``); ``pretrain_steps_to_train``: what the shared runs will train.
    """

    trials: int
    pretrainings: int
    pretrainings_reused: int
    steps: int
    train_gpu_hours: float = 0.0
    eval_gpu_hours: float = 0.0
    train_flops: int = 0
    eval_flops: int = 0
    pretrain_steps_asked: int = 0
    pretrain_steps_to_train: int = 0
    pretrain_asked: StageCost | None = None
    pretrain_to_train: StageCost | None = None

    @property
    def gpu_hours(self) -> float:
        """Estimated GPU-hours, training and evaluation together."""
        return self.train_gpu_hours + self.eval_gpu_hours

    @property
    def train_tflops(self) -> float:
        """Training TFLOPs to run, each shared pre-training counted once."""
        return self.train_flops / TERA

    @property
    def eval_tflops(self) -> float:
        """Evaluation TFLOPs to run (sampling and FID features)."""
        return self.eval_flops / TERA


def _gpus(plan: SweepPlan) -> float:
    """GPU-hours per hour of one GPU's work. A trial's W workers hold W x gpus GPUs for 1/W of the time (ideal
    data-parallel scaling); a fractional trial shares a GPU but is counted as holding a whole one."""
    r = plan.spec.resources  # (1 / workers of the time) x (the GPUs billed); a CPU spec is estimated on one GPU
    return max(1.0, r.gpus_billed / r.workers)


def _eval_gpus(plan: SweepPlan) -> float:
    """GPU-hours per hour of one GPU's evaluation: rank 0 samples and scores alone while the trial's other workers
    wait, so every GPU the trial holds counts for the whole time; a CPU spec is estimated on one GPU."""
    return max(1.0, plan.spec.resources.gpus_billed)


def stage_cost(plan: SweepPlan, config: TrialConfig, stage: Stage) -> StageCost:
    """The cost of running the whole ``stage`` of a trial with ``config`` under ``plan``'s resources; a pre-training
    trains at the config's effective mask rate, a fine-tuning on every patch."""
    steps = (config.pretrain if stage == "pretrain" else config.finetune).steps
    train, evaluation = stage_flops(config, stage, steps)
    rate = config.effective_mask_rate if stage == "pretrain" else 0.0
    return StageCost(
        train,
        evaluation,
        stage_gpu_hours(config, stage, rate) * _gpus(plan),
        stage_eval_gpu_hours(config, stage) * _eval_gpus(plan),
    )


def line_cost(plan: SweepPlan, job: LineJob) -> StageCost:
    """The cost of one planned line of a pre-training run: the steps it trains, from its start to its target."""
    return stage_cost(plan, with_pretrain_steps(plan.pretrains[job.key].config, job.steps_to_train), "pretrain")


def pretrain_jobs(plan: SweepPlan) -> dict[str, tuple[list[LineJob], dict[int, Serving]]]:
    """Per pre-training key: the lines to train and how each asked length is served (from what is on disk)."""
    return {key: plan_lines(plan.layout, key, pre.asked) for key, pre in plan.pretrains.items()}


def _add(costs: list[StageCost]) -> StageCost:
    return StageCost(
        sum(c.train_flops for c in costs),
        sum(c.eval_flops for c in costs),
        sum(c.train_gpu_hours for c in costs),
        sum(c.eval_gpu_hours for c in costs),
    )


def totals(plan: SweepPlan, jobs: dict[str, tuple[list[LineJob], dict[int, Serving]]] | None = None) -> PlanTotals:
    """What ``plan`` still has to run: each planned line of pre-training once, each unfinished trial's fine-tuning."""
    jobs = pretrain_jobs(plan) if jobs is None else jobs
    lines = [job for key_jobs, _ in jobs.values() for job in key_jobs]
    pre_costs = [line_cost(plan, job) for job in lines]
    ft_costs = [stage_cost(plan, t.config, "finetune") for t in plan.trials if not plan.trial_finished(t.trial_id)]
    pre_steps = sum(job.steps_to_train for job in lines)
    steps = pre_steps + sum(t.config.finetune.steps for t in plan.trials if not plan.trial_finished(t.trial_id))
    asked = [t for t in plan.trials if t.pretrain_key]
    reused = sum(1 for key_jobs, _ in jobs.values() if not key_jobs)
    costs = _add(pre_costs + ft_costs)
    return PlanTotals(
        len(plan.trials),
        len(plan.pretrains),
        reused,
        steps,
        train_gpu_hours=costs.train_gpu_hours,
        eval_gpu_hours=costs.eval_gpu_hours,
        train_flops=costs.train_flops,
        eval_flops=costs.eval_flops,
        pretrain_steps_asked=sum(t.config.pretrain.steps for t in asked),
        pretrain_steps_to_train=pre_steps,
        pretrain_asked=_add([stage_cost(plan, t.config, "pretrain") for t in asked]),
        pretrain_to_train=_add(pre_costs),
    )
