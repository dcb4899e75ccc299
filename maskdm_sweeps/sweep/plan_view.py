"""``maskdm-sweep plan``: the stage runs and trials of a spec, what is shared or reused, and what it will cost."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ..sweepspec.expand import SweepPlan
from .estimate import REFERENCE_GPU, stage_gpu_hours
from .packing import (GIB, MEASURED_PACKING_GPU, MEMORY_HEADROOM, suggest_for_configs, trials_per_gpu_of,
                      trials_the_work_allows)


@dataclass
class PlanTotals:
    trials: int
    pretrainings: int
    pretrainings_reused: int
    steps: int
    gpu_hours: float


def _gpus(plan: SweepPlan) -> float:
    """GPU-hours per hour of one GPU's work. A trial's W workers hold W x gpus GPUs for 1/W of the time (ideal
    data-parallel scaling); a fractional trial shares a GPU but is counted as holding a whole one."""
    r = plan.spec.resources  # (1 / workers of the time) x (the GPUs billed); a CPU spec is estimated on one GPU
    return max(1.0, r.gpus_billed / r.workers)


def totals(plan: SweepPlan) -> PlanTotals:
    trials = {t.trial_id: t for t in plan.trials}
    hours, steps, reused = 0.0, 0, 0
    for key, pre in plan.pretrains.items():
        if plan.pretrain_finished(key):
            reused += 1
            continue
        trial = trials[pre.trial_ids[0]]
        steps += trial.config.pretrain.steps
        hours += stage_gpu_hours(trial.config, "pretrain", trial.config.effective_mask_rate) * _gpus(plan)
    for t in plan.trials:
        if plan.trial_finished(t.trial_id):
            continue
        steps += t.config.finetune.steps
        hours += stage_gpu_hours(t.config, "finetune", 0.0) * _gpus(plan)
    return PlanTotals(len(plan.trials), len(plan.pretrains), reused, steps, hours)


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
    for col in ("pre-training", "mask", "effective rate", "steps", "batch", "feeds trials", "status"):
        pre_table.add_column(col)
    for key, pre in plan.pretrains.items():
        t = trials[pre.trial_ids[0]]
        mask = t.config.mask.model_dump()
        pre_table.add_row(key, " ".join(f"{k}={v}" for k, v in mask.items()), f"{t.config.effective_mask_rate:.1%}",
                          str(t.config.pretrain.steps), str(t.config.pretrain.batch_size), str(len(pre.trial_ids)),
                          "[green]reused (finished)" if plan.pretrain_finished(key) else "to train")
    trial_table = Table(title=f"{plan.spec.name}: trials", title_justify="left")
    for col in ("trial", "arm", "pre-training", "fine-tune steps", "status"):
        trial_table.add_column(col)
    for t in plan.trials:
        done = plan.trial_finished(t.trial_id)
        trial_table.add_row(t.trial_id, t.label, t.pretrain_key or "none (baseline)", str(t.config.finetune.steps),
                            "[green]finished" if done else "to run")
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
        f"{tot.steps:,} optimizer steps to run, about {tot.gpu_hours:.2f} GPU-hours on an {REFERENCE_GPU} "
        f"(estimated from reference throughput, evaluation not counted)"
    )
    r = plan.spec.resources
    if r.workers > 1:
        batches = sorted({getattr(t.config, st).batch_size for t in plan.trials for st in t.config.stages()})
        console.print(
            f"each trial trains on {r.workers} data-parallel workers ({r.gpus:g} GPUs and {r.cpus:g} CPUs each); "
            f"batch sizes are global: {', '.join(f'{b} = {r.workers} x {b // r.workers}' for b in batches)} images "
            f"per step; GPU-hours count all {r.trial_gpus:g} GPUs of a trial, whose wall time is about 1/{r.workers} "
            "of one GPU's (ideal scaling)")
    line = packing_line(plan)
    if line:
        console.print(line)
    return tot
