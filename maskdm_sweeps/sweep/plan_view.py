"""``maskdm-sweep plan``: the stage runs and trials of a spec, what is shared or reused, and what it will cost."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from ..lines import MAIN
from ..sweepspec.expand import SweepPlan
from ..sweepspec.identity import pretrain_length_shared, with_pretrain_steps
from ..trainer.compute import TERA, stage_flops
from ..trainer.config import Stage, TrialConfig
from .estimate import REFERENCE_GPU, parameter_count, stage_eval_gpu_hours, stage_gpu_hours
from .milestones import LineJob, LineState, Serving, plan_lines, read_lines
from .packing import (
    GIB,
    MEASURED_PACKING_GPU,
    MEMORY_HEADROOM,
    suggest_for_configs,
    trials_per_gpu_of,
    trials_the_work_allows,
)


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
    trials that start there, every trial with its cost, the totals, parameters and the packing advice."""
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
    }
