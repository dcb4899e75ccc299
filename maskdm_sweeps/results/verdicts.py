"""Each arm's sequential verdict against its baseline after a round of seeds (the adaptive sweep's look).

For an arm and its matching baseline, each finished seed's training TFLOPs to first reach the target FID (the
report's: by default the baseline's final mean FID), censored at the end of its run where it never does, go into
:func:`~maskdm_sweeps.results.sequential.look`: a Welch t interval on the log costs at the error this look may
spend, so the stated confidence holds over all the rounds (docs/method.md, "Seeds until decided").
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .analysis import arm_pairs
from .sequential import Look, SeedRule, seed_costs
from .sequential import look as sequential_look
from .speedup import Curves

LOOK_COLUMNS = [
    "arm",
    "target_fid",
    "n_seeds",
    "n_baseline_seeds",
    "speedup",
    "low",
    "high",
    "alpha",
    "verdict",
    "conditional_power",
    "baseline_limits",
    "trial_ids",
    "baseline_ids",
]


def seed_group(assignments: dict[str, Any]) -> str:
    """An arm (or a baseline) with every swept setting but the seed, as text: what an adaptive sweep adds seeds to
    and ``rounds.json`` keys its seeds by (e.g. ``{"mask.rate": 0.5}``, ``{"baseline": true}``)."""
    return json.dumps({k: v for k, v in assignments.items() if k != "seed"}, sort_keys=True, default=str)


def arm_look(arm: Curves, baseline: Curves, target: float, rule: SeedRule) -> Look:
    """The look at one arm: its seeds' and the baseline's costs to reach ``target`` through the rule."""
    return sequential_look(
        seed_costs(arm.compute, arm.fid, target), seed_costs(baseline.compute, baseline.fid, target), rule
    )


def sequential_looks(
    trials: pd.DataFrame, curves: pd.DataFrame, rule: SeedRule, target: float | None = None
) -> pd.DataFrame:
    """One row per masked arm with a baseline: the look at its finished seeds (:data:`LOOK_COLUMNS`).

    ``target``: the FID to reach; None for the matched baseline's final mean FID (the report's default).
    ``trial_ids`` / ``baseline_ids``: the finished trials the look used (lists), to map rows back to the plan.
    """
    rows = []
    for label, members, base, pts in arm_pairs(trials, curves):
        arm_curves = Curves.of(pts[pts["trial_id"].isin(members["trial_id"])])
        base_curves = Curves.of(pts[pts["trial_id"].isin(base["trial_id"])])
        goal = float(base["fid"].mean()) if target is None else float(target)
        seen = arm_look(arm_curves, base_curves, goal, rule)
        rows.append(
            {
                "arm": label,
                "target_fid": goal,
                "n_seeds": seen.n_arm,
                "n_baseline_seeds": seen.n_baseline,
                "speedup": seen.speedup,
                "low": seen.low,
                "high": seen.high,
                "alpha": seen.alpha,
                "verdict": seen.verdict,
                "conditional_power": seen.conditional_power,
                "baseline_limits": seen.baseline_limits,
                "trial_ids": sorted(members["trial_id"]),
                "baseline_ids": sorted(base["trial_id"]),
            }
        )
    return pd.DataFrame(rows, columns=LOOK_COLUMNS)
