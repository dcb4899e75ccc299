"""Seeds until decided, simulated: compute and wrong verdicts of the sequential seed rule against a fixed design.

Synthetic sweeps, one arm against the baseline per sweep, no training: each seed's compute to reach the target FID is
log-normal, the baseline's median 1, the arm's ``1 / speedup``, log-sd ``--sigma``. Every rule runs on the same
simulated seeds: ``spending`` (``SeedRule`` through ``look``), ``bonferroni`` (``alpha / looks`` at every look),
``no correction`` (``alpha`` at every look), both without futility, and ``fixed`` (``max_seeds`` a side, one look at
``alpha``). A round adds a seed to an open arm, and to the baseline when it limits the standard error. A sweep's
compute is ``(arm seeds + baseline seeds) / (2 max_seeds)``, 1.0 for the fixed design. A second scenario ends every
run at the baseline's median cost (1.0), so about half of the baseline's seeds are censored.

    python benchmarks/bench_sequential.py [--sweeps 2000] [--sigma 0.2] [--seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maskdm_sweeps.results.sequential import Costs, SeedRule, look
from maskdm_sweeps.results.speedup import Curves, bootstrap_interval

SPEEDUPS = (0.8, 1.0, 1.25, 2.0, 4.0)
RULES = ("spending", "bonferroni", "no correction", "fixed")
SCENARIOS = {"uncensored": math.inf, "censored at the baseline's median": 1.0}  # where every run ends
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Draws:
    """The simulated seeds of ``R`` sweeps: true costs ``arm`` and ``baseline`` ``(R, max_seeds)``, runs ending at
    ``end`` (a seed costing more is censored there)."""

    arm: np.ndarray
    baseline: np.ndarray
    end: float = math.inf

    def costs(self, side: str, sweep: int, n: int) -> Costs:
        """The first ``n`` seeds of one sweep's arm or baseline, censored at ``end``."""
        values = (self.arm if side == "arm" else self.baseline)[sweep, :n]
        return Costs(np.minimum(values, self.end), values > self.end)


@dataclass(frozen=True)
class Outcome:
    """One rule over ``R`` sweeps: each sweep's final verdict ``(R,)`` and seeds used ``(R,)`` per side."""

    verdicts: np.ndarray
    arm_seeds: np.ndarray
    baseline_seeds: np.ndarray

    def compute(self, max_seeds: int) -> np.ndarray:
        """Each sweep's compute as a share of the fixed design's ``2 max_seeds`` seeds ``(R,)``."""
        return (self.arm_seeds + self.baseline_seeds) / (2 * max_seeds)


def draw(speedup: float, sweeps: int, sigma: float, max_seeds: int, rng: np.random.Generator, end: float) -> Draws:
    """``sweeps`` sweeps of ``max_seeds`` log-normal seed costs a side (the arm's median ``1 / speedup``)."""
    arm = np.exp(rng.normal(-math.log(speedup), sigma, (sweeps, max_seeds)))
    baseline = np.exp(rng.normal(0.0, sigma, (sweeps, max_seeds)))
    return Draws(arm, baseline, end)


def run_sweep(draws: Draws, sweep: int, rule: SeedRule, alpha: float | None) -> tuple[str, int, int]:
    """One sweep under the round mechanics: ``min_seeds`` a side, then one more seed for an open arm (and for the
    baseline when it limits), each side capped at ``max_seeds``; (verdict, arm seeds, baseline seeds)."""
    n_arm = n_base = rule.min_seeds
    while True:
        v = look(draws.costs("arm", sweep, n_arm), draws.costs("baseline", sweep, n_base), rule, alpha)
        if not v.wants_seed:
            return v.verdict, n_arm, n_base
        n_arm = min(n_arm + 1, rule.max_seeds)
        if v.baseline_limits:
            n_base = min(n_base + 1, rule.max_seeds)


def run_rule(draws: Draws, name: str, rule: SeedRule) -> Outcome:
    """Every sweep of ``draws`` under one of :data:`RULES`."""
    alpha = 1 - rule.confidence
    sweeps = draws.arm.shape[0]
    if name == "fixed":
        full = rule.max_seeds
        verdicts = [
            look(draws.costs("arm", s, full), draws.costs("baseline", s, full), rule, alpha).verdict
            for s in range(sweeps)
        ]
        seeds = np.full(sweeps, full)
        return Outcome(np.array(verdicts, dtype=object), seeds, seeds.copy())
    per_look = {"spending": None, "bonferroni": alpha / rule.looks(), "no correction": alpha}[name]
    if per_look is not None:
        rule = replace(rule, futility=0.0)  # the comparison rules add seeds until decided or max
    runs = [run_sweep(draws, s, rule, per_look) for s in range(sweeps)]
    return Outcome(
        np.array([r[0] for r in runs], dtype=object), np.array([r[1] for r in runs]), np.array([r[2] for r in runs])
    )


def wrong(verdicts: np.ndarray, truth: float) -> np.ndarray:
    """``(R,)`` bool: "faster" where the true speed-up is <= 1, "slower" where it is >= 1."""
    return ((verdicts == "faster") & (truth <= 1)) | ((verdicts == "slower") & (truth >= 1))


def decided(verdicts: np.ndarray) -> np.ndarray:
    return (verdicts == "faster") | (verdicts == "slower")


def summarise(outcome: Outcome, fixed: Outcome, truth: float, max_seeds: int) -> dict[str, float]:
    """A rule's row at one true speed-up, against the fixed design on the same seeds."""
    v, f = outcome.verdicts, fixed.verdicts
    opposite = ((v == "faster") & (f == "slower")) | ((v == "slower") & (f == "faster"))
    return {
        "compute_vs_fixed": float(outcome.compute(max_seeds).mean()),
        "wrong": float(wrong(v, truth).mean()),
        "decided": float(decided(v).mean()),
        "contradicts_fixed": float(opposite.mean()),
        "open_where_fixed_decides": float((~decided(v) & decided(f)).mean()),
        "futile": float((v == "futile").mean()),
    }


def simulate(
    truth: float, sweeps: int, rule: SeedRule, sigma: float = 0.2, seed: int = 0, end: float = math.inf
) -> dict[str, Outcome]:
    """Every rule of :data:`RULES` on the same ``sweeps`` simulated sweeps at one true speed-up (seeded by ``seed``,
    the speed-up and ``end``, so that each cell of the tables can be rerun alone)."""
    key = [seed, round(truth * 1000), 0 if math.isinf(end) else round(end * 1000) + 1]
    draws = draw(truth, sweeps, sigma, rule.max_seeds, np.random.default_rng(key), end)
    return {name: run_rule(draws, name, rule) for name in RULES}


def bootstrap_excludes_one(sweeps: int, sigma: float, confidence: float, seed: int) -> dict[str, float]:
    """The share of sweeps with no true difference and 2 seeds a side where the report's percentile bootstrap
    (``speedup.bootstrap_interval``) excludes 1, against the Welch t interval at the same level.

    Each seed's FID curve is ``10 c_i / compute`` on a fine grid, so that it crosses the target 1 at its cost
    ``c_i`` and a mean curve crosses it at the mean cost (up to the grid's linear interpolation).
    """
    rng = np.random.default_rng([seed, 999])
    grid = np.geomspace(0.05, 20.0, 400)
    boot = welch = 0
    for s in range(sweeps):
        arm, base = np.exp(rng.normal(0.0, sigma, (2, 2)))
        low, high = bootstrap_interval(
            Curves(grid, 10 * arm[:, None] / grid),
            Curves(grid, 10 * base[:, None] / grid),
            target=10.0,
            confidence=confidence,
            resamples=2000,
            seed=s,
        )
        boot += not low <= 1 <= high
        v = look(Costs.uncensored(arm), Costs.uncensored(base), SeedRule(confidence=confidence), 1 - confidence)
        welch += not v.low <= 1 <= v.high
    return {"sweeps": sweeps, "bootstrap_excludes_1": boot / sweeps, "welch_excludes_1": welch / sweeps}


def fmt_row(name: str, row: dict[str, float]) -> str:
    cells = [
        f"{row['compute_vs_fixed']:.2f}",
        f"{100 * row['wrong']:.1f}%",
        f"{100 * row['decided']:.1f}%",
        f"{100 * row['contradicts_fixed']:.1f}%",
        f"{100 * row['open_where_fixed_decides']:.1f}%",
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def print_tables(scenario: str, rows: dict[str, dict[str, dict[str, float]]]) -> None:
    """One markdown table per scenario: a row per rule and true speed-up, then the mean compute over speed-ups."""
    print(f"\n### {scenario}\n")
    print("| rule | compute vs fixed | wrong verdicts | decided | contradicts fixed | open where fixed decides |")
    print("| --- | --- | --- | --- | --- | --- |")
    for truth, by_rule in rows.items():
        for name in RULES:
            print(fmt_row(f"{name}, true {truth}", by_rule[name]))
    means = {name: float(np.mean([rows[t][name]["compute_vs_fixed"] for t in rows])) for name in RULES}
    print("\nmean compute vs fixed over the speed-ups: " + ", ".join(f"{n} {m:.2f}" for n, m in means.items()))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=2000, help="simulated sweeps per true speed-up (>= 1000)")
    p.add_argument("--sigma", type=float, default=0.2, help="log-sd of a seed's cost to reach the target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spending-power", type=float, default=SeedRule.spending_power)
    p.add_argument("--futility", type=float, default=SeedRule.futility)
    p.add_argument("--bootstrap-sweeps", type=int, default=2000, help="sweeps of the bootstrap check (0: skip)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default results/<date>-sequential-simulation.json)")
    p.add_argument("--allow-few", action="store_true", help="allow --sweeps below 1000 (tests, smoke runs)")
    args = p.parse_args(argv)
    if args.sweeps < 1000 and not args.allow_few:
        p.error("--sweeps must be >= 1000 (or pass --allow-few)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    rule = SeedRule(spending_power=args.spending_power, futility=args.futility)
    started = time.perf_counter()
    print(f"# Seeds until decided: {args.sweeps} simulated sweeps per true speed-up, seed {args.seed}")
    print(f"seed costs log-normal, log-sd sigma = {args.sigma} (0.2: the assumed scale of the seed noise), {rule}")
    tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for scenario, end in SCENARIOS.items():
        rows: dict[str, dict[str, dict[str, float]]] = {}
        for truth in SPEEDUPS:
            outcomes = simulate(truth, args.sweeps, rule, args.sigma, args.seed, end)
            rows[str(truth)] = {n: summarise(o, outcomes["fixed"], truth, rule.max_seeds) for n, o in outcomes.items()}
        print_tables(scenario, rows)
        tables[scenario] = rows
    boot = None
    if args.bootstrap_sweeps:
        boot = bootstrap_excludes_one(args.bootstrap_sweeps, args.sigma, rule.confidence, args.seed)
        print(
            f"\n2 seeds a side, no true difference, {boot['sweeps']} sweeps: the percentile bootstrap at "
            f"{rule.confidence:.0%} excludes 1 in {boot['bootstrap_excludes_1']:.1%}, "
            f"Welch t in {boot['welch_excludes_1']:.1%}"
        )
    main_rows = tables["uncensored"]
    mean_compute = float(np.mean([main_rows[str(t)]["spending"]["compute_vs_fixed"] for t in SPEEDUPS]))
    wrong_at_1 = main_rows["1.0"]["spending"]["wrong"]
    goals = {
        "spending_mean_compute": {"value": mean_compute, "goal": "<= 0.5", "met": mean_compute <= 0.5},
        "spending_wrong_at_1": {"value": wrong_at_1, "goal": "<= 0.10", "met": wrong_at_1 <= 0.10},
    }
    print(f"\ngoals: spending mean compute {mean_compute:.2f} (<= 0.5), wrong at true 1.0 {wrong_at_1:.1%} (<= 10%)")
    result = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["bench_sequential.py", *argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rule": {k: getattr(rule, k) for k in ("min_seeds", "max_seeds", "confidence", "spending_power", "futility")},
        "alpha_per_look": {n: rule.alpha_at(n) for n in range(rule.min_seeds, rule.max_seeds + 1)},
        "speedups": list(SPEEDUPS),
        "tables": tables,
        "bootstrap_check": boot,
        "goals": goals,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or RESULTS / f"{datetime.date.today().isoformat()}-sequential-simulation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
