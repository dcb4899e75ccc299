"""The driver's side of an adaptive sweep: each round of :mod:`.rounds` run as the usual two phases on the round's
trials, its looks read from the finished trials, and (``stop_behind``) the stopper of :mod:`.behind` watching the
round's fine-tunings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..sweepspec.expand import SweepPlan
from .behind import BehindStopper
from .context import SweepContext
from .interrupt import InterruptHandler
from .outcome import SweepOutcome
from .progress import sweep_progress
from .rounds import RoundsState, run_rounds, seed_rule

RunPhases = Callable[..., None]


def current_looks(plan: SweepPlan) -> list[dict[str, Any]]:
    """Every arm's look at its finished seeds (rows of ``results.verdicts.LOOK_COLUMNS``, as plain JSON data)."""
    from ..results.collect import collect
    from ..results.verdicts import sequential_looks

    trials, curves = collect(plan.sweep_dir)
    targets = plan.spec.report.targets
    looks = sequential_looks(trials, curves, seed_rule(plan), targets[0] if targets else None)
    return json.loads(looks.to_json(orient="records"))


def behind_stopper(plan: SweepPlan, state: RoundsState, subset: SweepPlan, number: int) -> BehindStopper:
    """The stopper of one round, from the finished trials' FID points and the evaluation noise they measured."""
    from ..results.analysis import evaluation_noise, fid_points
    from ..results.collect import collect

    trials, curves = collect(plan.sweep_dir)
    return BehindStopper(
        plan, state, subset.trials, fid_points(trials, curves), evaluation_noise(trials)["noise_std"], number
    )


def run_adaptive(
    plan: SweepPlan,
    ctx: SweepContext,
    outcome: SweepOutcome,
    experiments: dict[str, str],
    stop: InterruptHandler,
    run_phases: RunPhases,
) -> RoundsState:
    """Run the rounds, each as ``run_phases(subset, ctx, outcome, {}, names, stop, make_stopper)`` under Tune experiment
    names suffixed with the round (``trials-1-r2``)."""

    def run_round(subset: SweepPlan, number: int, state: RoundsState) -> bool:
        names = {kind: f"{name}-r{number}" for kind, name in experiments.items()}
        # made after phase 1, which trains the round's baselines: the stopper compares with their curves
        stopper = (lambda: behind_stopper(plan, state, subset, number)) if plan.spec.sweep.stop_behind else None
        ctx.progress = sweep_progress(subset)
        run_phases(subset, ctx, outcome, {}, names, stop, stopper)
        return not stop.requested and not outcome.killed

    return run_rounds(plan, run_round, current_looks)
