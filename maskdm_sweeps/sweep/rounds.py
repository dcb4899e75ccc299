"""Seeds until decided: the rounds of an adaptive sweep (``sweep.seeds: {min, max, until: decided}``).

Round 1 runs ``min`` seeds of every arm and of every baseline. After each round every arm's verdict is looked at
(:mod:`maskdm_sweeps.results.verdicts`); an arm still open gets one more seed, and its baseline one when the
baseline's spread is what keeps the verdict open, within ``sweep.budget`` (the verdicts closest to being decided,
by conditional power, first). The state (seeds per group, every round's looks, the arms stopped as behind) lives in
``<sweep>/rounds.json``: ``resume`` after a kill continues the rounds, and finished trials are never trained again.
A new seed is an ordinary trial of the plan (the plan holds every seed up to ``max``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..files import read_json, write_json
from ..results.sequential import SeedRule
from ..results.verdicts import seed_group
from ..sweepspec.expand import SweepPlan, TrialPlan
from ..trainer.compute import TERA
from .events import append_event
from .plan_cost import stage_cost


class BudgetTooSmall(ValueError):
    """The first round (``min`` seeds of everything) alone would cost more than ``sweep.budget``."""


def group_of(trial: TrialPlan) -> str:
    """An arm (or a baseline) with every swept setting but the seed: what seeds are added to."""
    return seed_group(trial.assignments)


def seed_rule(plan: SweepPlan) -> SeedRule:
    """The spec's rule: its seeds' min and max and the report's confidence."""
    rounds = plan.spec.sweep.rounds
    assert rounds is not None, "not an adaptive sweep"
    return SeedRule(
        min_seeds=rounds.min, max_seeds=rounds.max, confidence=plan.spec.report.confidence, futility=rounds.futility
    )


# ------------------------------------------------------------------------------------------------------ cost
def budget_of(plan: SweepPlan) -> tuple[float, str] | None:
    """``(amount, unit)`` of the spec's budget (unit ``tflops`` or ``device_hours``), or None."""
    b = plan.spec.sweep.budget
    if b is None:
        return None
    return (b.tflops, "tflops") if b.tflops is not None else (float(b.device_hours or 0.0), "device_hours")


def design_cost(plan: SweepPlan, trials: Iterable[TrialPlan], unit: str, done: dict[str, float] | None = None) -> float:
    """What running ``trials`` costs from nothing, in ``unit``: each pre-training run once (to the longest length
    they ask of it), each fine-tuning in full, or the share ``done[trial_id]`` of it (a trial stopped as behind)."""
    done = done or {}
    trials = list(trials)
    pretrains: dict[str, TrialPlan] = {}
    for t in trials:
        longest = pretrains.get(t.pretrain_key or "")
        if t.pretrain_key and (longest is None or t.config.pretrain.steps > longest.config.pretrain.steps):
            pretrains[t.pretrain_key] = t
    costs = [(stage_cost(plan, t.config, "pretrain"), 1.0) for t in pretrains.values()]
    costs += [(stage_cost(plan, t.config, "finetune"), done.get(t.trial_id, 1.0)) for t in trials]
    if unit == "tflops":
        return sum(share * (c.train_flops + c.eval_flops) for c, share in costs) / TERA
    return sum(share * (c.train_gpu_hours + c.eval_gpu_hours) for c, share in costs)


# ------------------------------------------------------------------------------------------------------ state
@dataclass
class RoundsState:
    """An adaptive sweep's rounds, as ``rounds.json`` holds them."""

    seeds: dict[str, int]  # group -> seeds in the design: seeds 0..n-1
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per finished round: seeds, looks, added, left open
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> where it stopped as behind
    ended: str | None = None  # why the rounds ended: "decided", "budget", or None while they go on

    @classmethod
    def load_or_start(cls, plan: SweepPlan) -> RoundsState:
        data = read_json(plan.layout.rounds)
        if isinstance(data, dict) and "seeds" in data:
            known = {group_of(t) for t in plan.trials}
            seeds = {g: n for g, n in data["seeds"].items() if g in known}
            start = seed_rule(plan).min_seeds
            return cls(
                {**dict.fromkeys(known, start), **seeds},
                data.get("rounds", []),
                data.get("stopped", {}),
                data.get("ended"),
            )
        return cls(dict.fromkeys((group_of(t) for t in plan.trials), seed_rule(plan).min_seeds))

    def save(self, plan: SweepPlan) -> None:
        write_json(plan.layout.rounds, asdict(self))

    def active_stops(self) -> dict[str, dict[str, Any]]:
        """The groups stopped as behind and not continued since."""
        return {g: s for g, s in self.stopped.items() if not s.get("continued")}

    def design(self, plan: SweepPlan, seeds: dict[str, int] | None = None) -> list[TrialPlan]:
        """The trials of the current design (every group's seeds 0..n-1), in plan order."""
        seeds = self.seeds if seeds is None else seeds
        return [t for t in plan.trials if t.config.seed < seeds.get(group_of(t), 0)]

    def runnable(self, plan: SweepPlan) -> list[TrialPlan]:
        """The design less the trials of groups stopped as behind (paused: they keep their checkpoints)."""
        stopped = set(self.active_stops())
        return [t for t in self.design(plan) if group_of(t) not in stopped]

    def stopped_shares(self, plan: SweepPlan) -> dict[str, float]:
        """trial id -> the share of its fine-tuning a trial stopped as behind ran."""
        shares = {}
        for stop in self.active_stops().values():
            for tid, step in stop["steps"].items():
                t = next(t for t in plan.trials if t.trial_id == tid)
                shares[tid] = min(1.0, step / max(1, t.config.finetune.steps))
        return shares

    def cost(self, plan: SweepPlan, seeds: dict[str, int] | None = None, unit: str = "tflops") -> float:
        return design_cost(plan, self.design(plan, seeds), unit, self.stopped_shares(plan))


def continue_stopped(plan: SweepPlan, state: RoundsState) -> list[str]:
    """Groups stopped as behind under a smaller budget (or with stop_behind now off) continue: their markers go and
    their trials resume from their checkpoints, exempt from stopping again. Returns the groups continued."""
    budget = budget_of(plan)
    continued = []
    for group, stop in state.active_stops().items():
        raised = budget is not None and (stop.get("budget") is None or budget[0] > stop["budget"])
        if raised or not plan.spec.sweep.stop_behind:
            stop["continued"] = True
            for tid in stop["steps"]:
                plan.layout.finetune(tid).stopped_behind.unlink(missing_ok=True)
            continued.append(group)
    return continued


# ------------------------------------------------------------------------------------------------------ decide
def _group_by_trial(plan: SweepPlan) -> dict[str, str]:
    return {t.trial_id: group_of(t) for t in plan.trials}


def choose_seeds(plan: SweepPlan, state: RoundsState, looks: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
    """The next round's seeds per group and the arms left open by the budget.

    Every arm whose look is ``open`` and below ``max`` seeds gets one seed, and its baseline one when
    ``baseline_limits``; in order of conditional power (the most likely to be decided first), each only if the
    design with it stays within the budget.
    """
    rule, budget = seed_rule(plan), budget_of(plan)
    groups = _group_by_trial(plan)
    seeds, left_open = dict(state.seeds), []
    grown: set[str] = set()
    for row in sorted(looks, key=lambda r: -_number(r["conditional_power"])):
        if row["verdict"] != "open":
            continue
        arm, base = groups[row["trial_ids"][0]], groups[row["baseline_ids"][0]]
        if seeds[arm] >= rule.max_seeds or arm in state.active_stops():
            continue
        wanted = {arm: seeds[arm] + 1}
        if row["baseline_limits"] and base not in grown and seeds[base] < rule.max_seeds:
            wanted[base] = seeds[base] + 1
        trial = {**seeds, **wanted}
        if budget is not None and state.cost(plan, trial, budget[1]) > budget[0]:
            left_open.append(row["arm"])
            continue
        seeds = trial
        grown |= set(wanted)
    return seeds, left_open


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else 0.0


def costs(plan: SweepPlan, state: RoundsState, fixed: bool = False) -> dict[str, float]:
    """The design's cost so far (trials stopped as behind at their share), or with ``fixed`` the fixed design's
    (every arm and baseline at ``max`` seeds, in full): ``{"tflops", "device_hours"}``, for the report."""
    if fixed:
        return {unit: design_cost(plan, plan.trials, unit) for unit in ("tflops", "device_hours")}
    return {unit: state.cost(plan, unit=unit) for unit in ("tflops", "device_hours")}


def check_first_round(plan: SweepPlan, state: RoundsState) -> None:
    """Raise :class:`BudgetTooSmall` before anything starts when the current design alone exceeds the budget."""
    budget = budget_of(plan)
    if budget is None:
        return
    cost = state.cost(plan, unit=budget[1])
    if cost > budget[0]:
        raise BudgetTooSmall(
            f"sweep.budget {budget[1]}: {budget[0]:g} is less than the first round needs ({cost:.4g} {budget[1]}: "
            f"{seed_rule(plan).min_seeds} seeds of every arm and baseline); raise it or lower sweep.seeds.min"
        )


def reopen_for_budget(plan: SweepPlan, state: RoundsState) -> dict[str, int]:
    """Rounds the budget ended go on when it was raised since: the last look's open verdicts get the seeds the
    budget now allows (recorded as that round's ``added``), and the rounds continue. Returns the seeds added (none
    while the budget still stops them, or when the rounds did not end by the budget)."""
    if state.ended != "budget" or not state.rounds:
        return {}
    last = state.rounds[-1]
    seeds, left_open = choose_seeds(plan, state, last["looks"])
    added = {g: n - state.seeds[g] for g, n in seeds.items() if n != state.seeds[g]}
    if added:
        last["added"], last["left_open_by_budget"] = added, left_open
        state.seeds, state.ended = seeds, None
    return added


def run_rounds(
    plan: SweepPlan,
    run_round: Callable[[SweepPlan, int, RoundsState], bool],
    looks_of: Callable[[SweepPlan], list[dict[str, Any]]],
) -> RoundsState:
    """Run rounds until every verdict is decided, futile, at ``max``, or the budget is spent.

    ``run_round(subset, number, state)`` trains one round's trials (finished ones are skipped) and returns False
    when the sweep was stopped (Ctrl-C): the state is then saved and the rounds continue on ``resume``.
    ``looks_of(plan)`` reads the looks of the finished trials (rows of
    :data:`~maskdm_sweeps.results.verdicts.LOOK_COLUMNS`).
    """
    state = RoundsState.load_or_start(plan)
    continued = continue_stopped(plan, state)
    if continued:
        state.ended = None
        append_event(plan.sweep_dir, "rounds_continued", groups=continued)
    reopened = reopen_for_budget(plan, state)
    if reopened:
        append_event(plan.sweep_dir, "rounds_reopened", added=reopened)
    check_first_round(plan, state)
    state.save(plan)
    while state.ended is None:
        number = len(state.rounds) + 1
        if not run_round(plan.subset(t.trial_id for t in state.runnable(plan)), number, state):
            state.save(plan)
            return state
        looks = looks_of(plan)
        seeds, left_open = choose_seeds(plan, state, looks)
        added = {g: n - state.seeds[g] for g, n in seeds.items() if n != state.seeds[g]}
        state.rounds.append(
            {
                "round": number,
                "seeds": dict(state.seeds),
                "looks": looks,
                "added": added,
                "left_open_by_budget": left_open,
                "stopped": sorted(state.active_stops()),
                "cost": costs(plan, state),
                "fixed_cost": costs(plan, state, fixed=True),
            }
        )
        append_event(plan.sweep_dir, "round", number=number, added=added, left_open_by_budget=left_open)
        if not added:
            state.ended = "budget" if left_open else "decided"
        state.seeds = seeds
        state.save(plan)
    return state
