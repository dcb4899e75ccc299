"""``maskdm-sweep plan``: the stage runs and trials of a spec, what is shared or reused, and what it will cost."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ..sweepspec.expand import SweepPlan
from ..trainer.compute import TERA, stage_flops
from ..trainer.config import Stage, TrialConfig
from .estimate import REFERENCE_GPU, stage_eval_gpu_hours, stage_gpu_hours
from .packing import (GIB, MEASURED_PACKING_GPU, MEMORY_HEADROOM, suggest_for_configs, trials_per_gpu_of,
                      trials_the_work_allows)


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
    """What a plan still has to run (finished fine-tunings and reused pre-trainings left out); FLOPs are exact,
    GPU-hours an estimate on the reference GPU."""

    trials: int
    pretrainings: int
    pretrainings_reused: int
    steps: int
    train_gpu_hours: float = 0.0
    eval_gpu_hours: float = 0.0
    train_flops: int = 0
    eval_flops: int = 0

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
    return StageCost(train, evaluation, stage_gpu_hours(config, stage, rate) * _gpus(plan),
                     stage_eval_gpu_hours(config, stage) * _eval_gpus(plan))


def pretrain_cost(plan: SweepPlan, key: str) -> StageCost:
    """The cost of the shared pre-training ``key``, trained once for all the trials it feeds (its config: the first
    trial's, whose pre-training settings every sharing trial has)."""
    return stage_cost(plan, plan.pretrains[key].config, "pretrain")


def totals(plan: SweepPlan) -> PlanTotals:
    """What ``plan`` still has to run: each unfinished pre-training once, each unfinished trial's fine-tuning."""
    costs, steps, reused = [], 0, 0
    trials = {t.trial_id: t for t in plan.trials}
    for key, pre in plan.pretrains.items():
        if plan.pretrain_finished(key):
            reused += 1
            continue
        steps += trials[pre.trial_ids[0]].config.pretrain.steps
        costs.append(pretrain_cost(plan, key))
    for t in plan.trials:
        if plan.trial_finished(t.trial_id):
            continue
        steps += t.config.finetune.steps
        costs.append(stage_cost(plan, t.config, "finetune"))
    return PlanTotals(len(plan.trials), len(plan.pretrains), reused, steps,
                      train_gpu_hours=sum(c.train_gpu_hours for c in costs),
                      eval_gpu_hours=sum(c.eval_gpu_hours for c in costs),
                      train_flops=sum(c.train_flops for c in costs), eval_flops=sum(c.eval_flops for c in costs))


def format_tflops(flops: int) -> str:
    """FLOPs as TFLOPs for a table: whole numbers with thousands separators from 100 up, 3 significant digits below."""
    tflops = flops / TERA
    return f"{tflops:,.0f}" if tflops >= 100 else f"{tflops:.3g}"


def _cost_cell(cost: StageCost) -> str:
    return f"{format_tflops(cost.train_flops)} / {format_tflops(cost.eval_flops)}"


def packing_line(plan: SweepPlan) -> str | None:
    """One line on packing trials per GPU (``sweep/packing.py``'s rules), or None when there is nothing to say.

    Whole GPUs (or none, a CPU spec): the suggested ``resources.gpus`` when the trials are small enough to share a
    card. Fractional GPUs: whether that many trials per card fit its memory.
    """
    gpus = plan.spec.resources.gpus
    if plan.spec.resources.workers > 1:
        return None  # data-parallel workers hold whole GPUs: nothing to pack
    s = suggest_for_configs([t.config for t in plan.trials])
    gflop, each, card = s.flops_per_step / 1e9, s.peak_bytes / GIB, s.card_memory_gib
    if 0 < gpus < 1:
        k = trials_per_gpu_of(gpus)
        if k <= s.fit_in_memory:
            return (f"packing: resources.gpus {gpus:g} puts {k} trials on a GPU; they fit in memory "
                    f"({each:.1f} GiB each, {MEMORY_HEADROOM:.0%} of the card's {card:g} GiB holds {s.fit_in_memory})")
        fix = f"use resources.gpus: {1 / s.fit_in_memory:.3g}" if s.fit_in_memory else "not even one fits"
        return (f"[yellow]warning:[/] packing: resources.gpus {gpus:g} puts {k} trials on a GPU, {k} x {each:.1f} "
                f"GiB exceeds {MEMORY_HEADROOM:.0%} of the card's {card:g} GiB; {fix} (benchmarks/README.md)")
    if s.trials_per_gpu == 1:
        if gpus == 0:
            return None  # a CPU spec whose trials would fill a GPU anyway: nothing to suggest
        why = ("their step fills a GPU" if trials_the_work_allows(s.flops_per_step) == 1 else
               f"{each:.1f} GiB each leaves no room for a second in {card:g} GiB")
        return f"packing: none, one trial per GPU ({gflop:,.1f} GFLOP per step; {why})"
    where = "on GPUs, " if gpus == 0 else ""
    return (f"packing: {where}these trials are small ({gflop:,.1f} GFLOP per step); {s.trials_per_gpu} per GPU "
            f"(resources.gpus: {s.gpus_per_trial:g}) fit in memory ({each:.1f} GiB each) and gave "
            f"{s.measured_speedup:.1f}x the throughput of one alone on an {MEASURED_PACKING_GPU} "
            f"(benchmarks/README.md)")


def print_plan(plan: SweepPlan, console: Console | None = None) -> PlanTotals:
    console = console or Console()
    trials = {t.trial_id: t for t in plan.trials}
    pre_table = Table(title=f"{plan.spec.name}: shared pre-trainings", title_justify="left")
    pre_costs = {key: pretrain_cost(plan, key) for key in plan.pretrains}
    pre_evaluated = any(c.eval_flops for c in pre_costs.values())  # eval.stages has pretrain: show its share
    for col in ("pre-training", "mask", "effective rate", "steps", "batch",
                "TFLOPs train / eval" if pre_evaluated else "train TFLOPs", "feeds trials", "status"):
        pre_table.add_column(col)
    for key, pre in plan.pretrains.items():
        t = trials[pre.trial_ids[0]]
        mask = t.config.mask.model_dump()
        cost = _cost_cell(pre_costs[key]) if pre_evaluated else format_tflops(pre_costs[key].train_flops)
        status = "[green]reused (finished)" if plan.pretrain_finished(key) else "to train"
        pre_table.add_row(key, " ".join(f"{k}={v}" for k, v in mask.items()), f"{t.config.effective_mask_rate:.1%}",
                          str(t.config.pretrain.steps), str(t.config.pretrain.batch_size), cost,
                          str(len(pre.trial_ids)), status)
    trial_table = Table(title=f"{plan.spec.name}: trials", title_justify="left")
    for col in ("trial", "arm", "pre-training", "fine-tune steps", "TFLOPs train / eval", "status"):
        trial_table.add_column(col)
    for t in plan.trials:
        done = plan.trial_finished(t.trial_id)
        trial_table.add_row(t.trial_id, t.label, t.pretrain_key or "none (baseline)", str(t.config.finetune.steps),
                            _cost_cell(stage_cost(plan, t.config, "finetune")), "[green]finished" if done else "to run")
    if plan.pretrains:
        console.print(pre_table)
    console.print(trial_table)
    missing = sorted({str(d.path) for t in plan.trials for d in (t.config.data, t.config.finetune.data)
                      if d is not None and d.path is not None and not d.path.exists()})
    for path in missing:
        console.print(f"[yellow]note:[/] data path {path} does not exist here (`validate` and `run` require it)")
    tot = totals(plan)
    search = plan.spec.sweep.search
    extra = f" ({search.method} search: {search.num_samples} samples per grid point)" if search.method != "grid" else ""
    console.print(
        f"{tot.trials} trials{extra}, {tot.pretrainings} pre-trainings ({tot.pretrainings_reused} reused), "
        f"{tot.steps:,} optimizer steps to run: {format_tflops(tot.train_flops)} training TFLOPs (each pre-training "
        f"once) and {format_tflops(tot.eval_flops)} evaluation TFLOPs, about {tot.gpu_hours:.2f} GPU-hours on an "
        f"{REFERENCE_GPU} ({tot.train_gpu_hours:.2f} training + {tot.eval_gpu_hours:.2f} evaluation, estimated from "
        f"reference throughput)"
    )
    r = plan.spec.resources
    if r.workers > 1:
        batches = sorted({getattr(t.config, st).batch_size for t in plan.trials for st in t.config.stages()})
        console.print(
            f"each trial trains on {r.workers} data-parallel workers ({r.gpus:g} GPUs and {r.cpus:g} CPUs each); "
            f"batch sizes are global: {', '.join(f'{b} = {r.workers} x {b // r.workers}' for b in batches)} images "
            f"per step; GPU-hours count all {r.trial_gpus:g} GPUs of a trial, whose training wall time is about "
            f"1/{r.workers} of one GPU's (ideal scaling); evaluation runs on one worker while the others wait")
    line = packing_line(plan)
    if line:
        console.print(line)
    return tot
