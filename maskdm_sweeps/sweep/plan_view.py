"""``maskdm-sweep plan``: the stage runs and trials of a spec, what is shared or reused, and what it will cost."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ..maskdm import effective_mask_rate
from ..spec.expand import SweepPlan
from ..trainer.config import build_mask_from_config
from .estimate import REFERENCE_GPU, stage_gpu_hours


@dataclass
class PlanTotals:
    trials: int
    pretrainings: int
    pretrainings_reused: int
    steps: int
    gpu_hours: float


def _effective_rate(trial) -> float:
    cfg = trial.config
    return effective_mask_rate(build_mask_from_config(cfg.mask), cfg.model_config_resolved().grid)


def _gpus(plan: SweepPlan) -> float:
    return max(1.0, plan.spec.resources.gpus)  # a fractional trial shares a GPU: count the whole GPU's hours


def totals(plan: SweepPlan) -> PlanTotals:
    trials = {t.trial_id: t for t in plan.trials}
    hours, steps, reused = 0.0, 0, 0
    for key, pre in plan.pretrains.items():
        if plan.pretrain_finished(key):
            reused += 1
            continue
        trial = trials[pre.trial_ids[0]]
        steps += trial.config.pretrain.steps
        hours += stage_gpu_hours(trial.config, "pretrain", _effective_rate(trial)) * _gpus(plan)
    for t in plan.trials:
        if (plan.trial_dir(t.trial_id) / "finetune" / "result.json").exists():
            continue
        steps += t.config.finetune.steps
        hours += stage_gpu_hours(t.config, "finetune", 0.0) * _gpus(plan)
    return PlanTotals(len(plan.trials), len(plan.pretrains), reused, steps, hours)


def print_plan(plan: SweepPlan, console: Console | None = None) -> PlanTotals:
    console = console or Console()
    trials = {t.trial_id: t for t in plan.trials}
    pre_table = Table(title=f"{plan.spec.name}: shared pre-trainings", title_justify="left")
    for col in ("pre-training", "mask", "effective rate", "steps", "batch", "feeds trials", "status"):
        pre_table.add_column(col)
    for key, pre in plan.pretrains.items():
        t = trials[pre.trial_ids[0]]
        mask = t.config.mask.model_dump()
        pre_table.add_row(key, " ".join(f"{k}={v}" for k, v in mask.items()), f"{_effective_rate(t):.1%}",
                          str(t.config.pretrain.steps), str(t.config.pretrain.batch_size), str(len(pre.trial_ids)),
                          "[green]reused (finished)" if plan.pretrain_finished(key) else "to train")
    trial_table = Table(title=f"{plan.spec.name}: trials", title_justify="left")
    for col in ("trial", "arm", "pre-training", "fine-tune steps", "status"):
        trial_table.add_column(col)
    for t in plan.trials:
        done = (plan.trial_dir(t.trial_id) / "finetune" / "result.json").exists()
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
    return tot
