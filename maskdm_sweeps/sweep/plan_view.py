"""``maskdm-sweep plan``: the stage runs and trials of a spec, what is shared or reused, and what it will cost."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from ..lines import MAIN
from ..sweepspec.expand import SweepPlan
from ..sweepspec.identity import pretrain_length_shared
from ..trainer.compute import TERA
from .estimate import REFERENCE_GPU, parameter_count
from .milestones import LineJob, LineState, Serving, read_lines
from .packing import (
    GIB,
    MEASURED_PACKING_GPU,
    MEMORY_HEADROOM,
    suggest_for_configs,
    trials_per_gpu_of,
    trials_the_work_allows,
)
from .plan_cost import PlanTotals, StageCost, line_cost, pretrain_jobs, stage_cost, totals


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
            return (
                f"packing: resources.gpus {gpus:g} puts {k} trials on a GPU; they fit in memory "
                f"({each:.1f} GiB each, {MEMORY_HEADROOM:.0%} of the card's {card:g} GiB holds {s.fit_in_memory})"
            )
        fix = f"use resources.gpus: {1 / s.fit_in_memory:.3g}" if s.fit_in_memory else "not even one fits"
        return (
            f"[yellow]warning:[/] packing: resources.gpus {gpus:g} puts {k} trials on a GPU, {k} x {each:.1f} "
            f"GiB exceeds {MEMORY_HEADROOM:.0%} of the card's {card:g} GiB; {fix} (benchmarks/README.md)"
        )
    if s.trials_per_gpu == 1:
        if gpus == 0:
            return None  # a CPU spec whose trials would fill a GPU anyway: nothing to suggest
        why = (
            "their step fills a GPU"
            if trials_the_work_allows(s.flops_per_step) == 1
            else f"{each:.1f} GiB each leaves no room for a second in {card:g} GiB"
        )
        return f"packing: none, one trial per GPU ({gflop:,.1f} GFLOP per step; {why})"
    where = "on GPUs, " if gpus == 0 else ""
    return (
        f"packing: {where}these trials are small ({gflop:,.1f} GFLOP per step); {s.trials_per_gpu} per GPU "
        f"(resources.gpus: {s.gpus_per_trial:g}) fit in memory ({each:.1f} GiB each) and gave "
        f"{s.measured_speedup:.1f}x the throughput of one alone on an {MEASURED_PACKING_GPU} "
        f"(benchmarks/README.md)"
    )


def _length_line(n: int, serving: Serving, jobs: list[LineJob], lines: dict[str, LineState]) -> str:
    """What ``plan`` will do for one asked length, in words."""
    where = "" if serving.line == MAIN else f" (branch {serving.line})"
    if serving.how == "kept":
        return f"[green]kept[/]{where}: no training"
    job = next(j for j in jobs if j.unit == serving.unit)
    main = lines[MAIN]
    if job.branch_from is not None or (job.line != MAIN and job.line not in lines):
        passed = (
            f"no checkpoint at {n:,}: the run is at step {main.head:,} (kept: "
            f"{', '.join(f'{k:,}' for k in main.kept) or 'none'}); "
        )
        start = f"from the kept {job.start:,}" if job.start else "from scratch"
        return f"[yellow]{passed}a branch trains it {start}[/] ({n - job.start:,} steps)"
    if job.start:
        return f"extends the run from step {job.start:,}" + where
    return "to train" + where


def _pretraining_tree(plan: SweepPlan, jobs: dict[str, tuple[list[LineJob], dict[int, Serving]]]) -> Tree:
    """Each pre-training run, its lengths (milestones) and how each is served, and the trials that start there."""
    tree = Tree(f"[bold]{plan.spec.name}: pre-trainings[/] (one run per key serves every length asked of it)")
    for key, pre in plan.pretrains.items():
        c = pre.config
        key_jobs, serving = jobs[key]
        mask = " ".join(f"{k}={v}" for k, v in c.mask.model_dump().items())
        train = sum(j.steps_to_train for j in key_jobs)
        shared = "" if pretrain_length_shared(c) else " [yellow](lr decays to the end: each length its own run)[/]"
        node = tree.add(
            f"{key}  {mask} (effective {c.effective_mask_rate:.1%}), batch {c.pretrain.batch_size}, "
            f"seed {c.seed}: {train:,} steps to train "
            f"({format_tflops(sum(line_cost(plan, j).train_flops for j in key_jobs))} TFLOPs){shared}"
        )
        lines = {line.name: line for line in read_lines(plan.layout, key)}
        by_length: dict[int, list[str]] = {}
        for tid, n in pre.lengths.items():
            by_length.setdefault(n, []).append(tid)
        labels = plan.short_labels()
        for n in pre.asked:
            leaf = node.add(f"{n:,} steps: {_length_line(n, serving[n], key_jobs, lines)}")
            for tid in by_length[n]:
                leaf.add(f"[dim]fine-tunes[/] {tid} {labels[tid]}")
    return tree


def _sharing_line(tot: PlanTotals) -> str | None:
    """Pre-training steps to train against those asked for, and what sharing by prefix saves."""
    if not tot.pretrain_steps_asked:
        return None
    asked, train = tot.pretrain_asked, tot.pretrain_to_train
    assert asked is not None and train is not None  # both known when a pre-training is asked for
    saved = tot.pretrain_steps_asked - tot.pretrain_steps_to_train
    if saved == 0:
        return f"pre-training: {tot.pretrain_steps_to_train:,} steps to train (no length shares a run or is kept)"
    return (
        f"pre-training: {tot.pretrain_steps_to_train:,} steps to train for {tot.pretrain_steps_asked:,} asked "
        f"(each trial its own length); sharing runs by prefix and reusing kept lengths saves {saved:,} steps, "
        f"{format_tflops(asked.train_flops - train.train_flops)} training TFLOPs, about "
        f"{asked.train_gpu_hours - train.train_gpu_hours:.2f} GPU-hours"
    )


def parameter_counts(plan: SweepPlan) -> dict[tuple[str, str], int]:
    """``(preset, strategy)`` -> parameters of that trial network (the baseline's strategy: ``none``): what a
    strategy adds (a MaskDiT decoder, a patch-mixer) stays in the network through fine-tuning."""
    counts: dict[tuple[str, str], int] = {}
    for t in plan.trials:
        strategy = "none" if t.is_baseline else t.config.mask.name
        counts.setdefault((t.config.model.preset, strategy), parameter_count(t.config.model_config_resolved()))
    return counts


def _parameter_line(plan: SweepPlan) -> str:
    by_preset: dict[str, list[str]] = {}
    for (preset, strategy), n in parameter_counts(plan).items():
        by_preset.setdefault(preset, []).append(f"{strategy} {n:,}")
    return "parameters: " + "; ".join(f"{preset}: {', '.join(parts)}" for preset, parts in by_preset.items())


def adaptive_costs(plan: SweepPlan) -> dict | None:
    """An adaptive spec's compute from nothing (``rounds.design_cost``: training and evaluation, each pre-training
    once): the least, every arm and baseline at ``min`` seeds (every verdict decided at the first look), and the
    most, all at ``max`` (the plan's trials); in TFLOPs and estimated device-hours, with the budget. None for a
    fixed list of seeds."""
    rounds = plan.spec.sweep.rounds
    if rounds is None:
        return None
    from .rounds import RoundsState, budget_of, design_cost, group_of

    least = RoundsState(dict.fromkeys({group_of(t) for t in plan.trials}, rounds.min)).design(plan)
    costs: dict = {"min_seeds": rounds.min, "max_seeds": rounds.max}
    for unit in ("tflops", "device_hours"):
        costs[f"least_{unit}"] = design_cost(plan, least, unit)
        costs[f"most_{unit}"] = design_cost(plan, plan.trials, unit)
    budget = budget_of(plan)
    costs["budget"] = None if budget is None else {"amount": budget[0], "unit": budget[1]}
    return costs


def _rounds_lines(plan: SweepPlan) -> list[str]:
    """What an adaptive spec may cost, between its first round and every seed, and its budget."""
    c = adaptive_costs(plan)
    if c is None:
        return []
    lines = [
        f"seeds until decided: least {format_tflops(int(c['least_tflops'] * TERA))} TFLOPs (about "
        f"{c['least_device_hours']:.3g} device-hours) if every verdict is decided after {c['min_seeds']} seeds; most "
        f"{format_tflops(int(c['most_tflops'] * TERA))} TFLOPs ({c['most_device_hours']:.3g} device-hours) with "
        f"every arm and baseline at {c['max_seeds']} seeds (training and evaluation from nothing, each pre-training "
        "once)"
    ]
    if c["budget"] is not None:
        amount, unit = c["budget"]["amount"], c["budget"]["unit"]
        name = "TFLOPs" if unit == "tflops" else "device-hours"
        lines.append(
            f"budget: {amount:g} {name} (sweep.budget.{unit}): no seed starts that would take the sweep past it, "
            "the verdicts closest to decided get seeds first"
        )
        if amount < c[f"least_{unit}"]:
            lines.append("[yellow]warning:[/] the budget is less than the first round needs: `run` refuses it")
    return lines


def print_plan(plan: SweepPlan, console: Console | None = None) -> PlanTotals:
    from ..console import output_console

    console = console or output_console()
    jobs = pretrain_jobs(plan)
    trial_table = Table(title=f"{plan.spec.name}: trials", title_justify="left")
    for col in (
        "trial",
        "arm",
        "starts from (pre-training @ steps)",
        "fine-tune steps",
        "TFLOPs train / eval",
        "status",
    ):
        trial_table.add_column(col)
    labels = plan.short_labels()
    for t in plan.trials:
        done = plan.trial_finished(t.trial_id)
        start = f"{t.pretrain_key} @ {t.config.pretrain.steps:,}" if t.pretrain_key else "none (baseline)"
        trial_table.add_row(
            t.trial_id,
            labels[t.trial_id],
            start,
            str(t.config.finetune.steps),
            _cost_cell(stage_cost(plan, t.config, "finetune")),
            "[green]finished" if done else "to run",
        )
    if plan.pretrains:
        console.print(_pretraining_tree(plan, jobs))
    console.print(trial_table)
    missing = sorted(
        {
            str(d.path)
            for t in plan.trials
            for d in (t.config.data, t.config.finetune.data)
            if d is not None and d.path is not None and not d.path.exists()
        }
    )
    for path in missing:
        console.print(f"[yellow]note:[/] data path {path} does not exist here (`validate` and `run` require it)")
    tot = totals(plan, jobs)
    search = plan.spec.sweep.search
    extra = f" ({search.method} search: {search.num_samples} samples per grid point)" if search.method != "grid" else ""
    console.print(
        f"{tot.trials} trials{extra}, {tot.pretrainings} pre-trainings ({tot.pretrainings_reused} reused), "
        f"{tot.steps:,} optimizer steps to run: {format_tflops(tot.train_flops)} training TFLOPs (each stretch of "
        f"pre-training once) and {format_tflops(tot.eval_flops)} evaluation TFLOPs, "
        f"about {tot.gpu_hours:.2f} GPU-hours on an "
        f"{REFERENCE_GPU} ({tot.train_gpu_hours:.2f} training + {tot.eval_gpu_hours:.2f} evaluation, estimated from "
        f"reference throughput)"
    )
    for rounds_line in _rounds_lines(plan):
        console.print(rounds_line)
    console.print(_parameter_line(plan))
    sharing = _sharing_line(tot)
    if sharing:
        console.print(sharing)
    r = plan.spec.resources
    if r.workers > 1:
        batches = sorted({getattr(t.config, st).batch_size for t in plan.trials for st in t.config.stages()})
        console.print(
            f"each trial trains on {r.workers} data-parallel workers ({r.gpus:g} GPUs and {r.cpus:g} CPUs each); "
            f"batch sizes are global: {', '.join(f'{b} = {r.workers} x {b // r.workers}' for b in batches)} images "
            f"per step; GPU-hours count all {r.trial_gpus:g} GPUs of a trial, whose training wall time is about "
            f"1/{r.workers} of one GPU's (ideal scaling); evaluation runs on one worker while the others wait"
        )
    line = packing_line(plan)
    if line:
        console.print(line)
    return tot


def plan_json(plan: SweepPlan) -> dict:
    """What ``plan`` prints, as data (``plan --json``): the pre-training runs with how each length is served and the
    trials that start there, every trial with its cost, the totals, parameters, the packing advice and an adaptive
    spec's least and most cost (``seeds_until_decided``)."""
    jobs = pretrain_jobs(plan)
    tot = totals(plan, jobs)
    labels = plan.short_labels()
    pretrainings = []
    for key, pre in plan.pretrains.items():
        key_jobs, serving = jobs[key]
        c = pre.config
        pretrainings.append(
            {
                "key": key,
                "label": plan.pretrain_label(key),
                "mask": c.mask.model_dump(mode="json"),
                "effective_mask_rate": c.effective_mask_rate,
                "batch_size": c.pretrain.batch_size,
                "seed": c.seed,
                "length_shared": pretrain_length_shared(c),
                "steps_to_train": sum(j.steps_to_train for j in key_jobs),
                "train_tflops_to_train": sum(line_cost(plan, j).train_flops for j in key_jobs) / TERA,
                "lengths": [
                    {
                        "steps": n,
                        "how": serving[n].how,
                        "line": serving[n].line,
                        "from_step": serving[n].from_step,
                        "trials": sorted(t for t, m in pre.lengths.items() if m == n),
                    }
                    for n in pre.asked
                ],
            }
        )
    trials = []
    for t in plan.trials:
        cost = stage_cost(plan, t.config, "finetune")
        trials.append(
            {
                "trial_id": t.trial_id,
                "label": t.label,
                "short_label": labels[t.trial_id],
                "assignments": t.assignments,
                "starts_from": {"pretrain_key": t.pretrain_key, "steps": t.config.pretrain.steps}
                if t.pretrain_key
                else None,
                "finetune_steps": t.config.finetune.steps,
                "finetune_train_tflops": cost.train_flops / TERA,
                "finetune_eval_tflops": cost.eval_flops / TERA,
                "status": "finished" if plan.trial_finished(t.trial_id) else "to run",
            }
        )
    return {
        "sweep": plan.spec.name,
        "spec_hash": plan.spec_hash,
        "pretrainings": pretrainings,
        "trials": trials,
        "totals": {
            "trials": tot.trials,
            "pretrainings": tot.pretrainings,
            "pretrainings_reused": tot.pretrainings_reused,
            "steps": tot.steps,
            "train_tflops": tot.train_tflops,
            "eval_tflops": tot.eval_tflops,
            "gpu_hours": tot.gpu_hours,
            "train_gpu_hours": tot.train_gpu_hours,
            "eval_gpu_hours": tot.eval_gpu_hours,
            "reference_gpu": REFERENCE_GPU,
            "pretrain_steps_asked": tot.pretrain_steps_asked,
            "pretrain_steps_to_train": tot.pretrain_steps_to_train,
        },
        "parameters": [
            {"preset": preset, "strategy": strategy, "parameters": n}
            for (preset, strategy), n in parameter_counts(plan).items()
        ],
        "packing": packing_line(plan),
        "seeds_until_decided": adaptive_costs(plan),  # None for a fixed list of seeds
    }
