"""Seeds until decided, as an adaptive sweep's ``rounds.json`` left it: the report's section, the summary lines the
commands print, and the parent run's metrics and tags.

``rounds.json`` (written by the driver, ``sweep/rounds.py``) holds every round's looks (rows of
:data:`~maskdm_sweeps.results.verdicts.LOOK_COLUMNS`), the seeds added, the verdicts the budget left open, the arms
stopped as behind and the compute of the design against the fixed design's. Nothing here recomputes a verdict.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..files import read_json
from ..layout import SweepDir
from ..naming import mlflow_key
from .analysis import arm_labels
from .markdown import markdown_table
from .verdicts import seed_group

METHOD = "docs/method.md#seeds-until-decided-sequential-verdicts"


@dataclass(frozen=True)
class ArmRounds:
    """One arm of an adaptive sweep where its rounds left it: its last look, or where it was stopped as behind."""

    arm: str
    target_fid: float
    seeds: int  # the seeds its last look rests on (stopped as behind: every seed it ran)
    baseline_seeds: int
    rounds: int  # the rounds it trained seeds in
    verdict: str  # the last look's, one of results.sequential.VERDICTS
    speedup: float
    low: float  # the interval at the level spent at that look (1 - alpha)
    high: float
    alpha: float
    stopped_tflops: float | None = None  # stopped as behind (not continued since) at this training compute

    @property
    def verdict_text(self) -> str:
        if self.stopped_tflops is not None:
            return f"slower (stopped at {self.stopped_tflops:.4g} TFLOPs)"
        return self.verdict


def read_rounds(sweep_dir: Path) -> dict[str, Any] | None:
    """``rounds.json`` of an adaptive sweep, or None (a fixed list of seeds has none)."""
    data = read_json(SweepDir.of(sweep_dir).rounds)
    return data if isinstance(data, dict) and isinstance(data.get("rounds"), list) else None


def _number(value: Any) -> float:
    """A number of ``rounds.json`` (JSON writes NaN and infinity as null)."""
    return float(value) if isinstance(value, int | float) else math.nan


def _groups(sweep_dir: Path) -> dict[str, str]:
    """trial id -> its group (every swept setting but the seed), from ``plan.json``."""
    plan = read_json(SweepDir.of(sweep_dir).plan_file) or {}
    return {t["trial_id"]: seed_group(t.get("assignments", {})) for t in plan.get("trials", [])}


def _baseline_group(group: str, groups: set[str]) -> str | None:
    """The baseline group an arm group is compared with: equal in every setting the baseline keeps."""
    arm = json.loads(group)
    for other in sorted(groups):
        kept = json.loads(other)
        if kept.get("baseline") is True and all(arm.get(k) == v for k, v in kept.items() if k != "baseline"):
            return other
    return None


def _rounds_in(group: str, history: list[dict[str, Any]]) -> int:
    """Round 1, and every later round that the round before added seeds of ``group`` to."""
    return 1 + sum(group in r.get("added", {}) for r in history[:-1]) if history else 0


def _from_look(look: dict[str, Any], seeds: int, rounds: int, stopped: float | None) -> ArmRounds:
    return ArmRounds(
        str(look["arm"]), _number(look.get("target_fid")), seeds, int(look.get("n_baseline_seeds") or 0), rounds,
        str(look.get("verdict")), _number(look.get("speedup")), _number(look.get("low")), _number(look.get("high")),
        _number(look.get("alpha")), stopped,
    )  # fmt: skip


def _arm_of_group(group: str, groups: dict[str, str], trials: pd.DataFrame | None) -> str:
    """The arm label of a group's trials (as the looks name arms), or the group itself when no trial has started."""
    if trials is not None and len(trials):
        members = trials["trial_id"].map(groups) == group
        if members.any():
            return str(arm_labels(trials)[members.to_numpy()].iloc[0])
    return group


def arm_rounds(sweep_dir: Path, rounds: dict[str, Any], trials: pd.DataFrame | None = None) -> list[ArmRounds]:
    """Every arm of the rounds, in the order the looks first name them, then arms stopped before any look: its last
    look, and for an arm stopped as behind (``rounds.json``'s ``stopped``, not continued) where it stopped.
    ``trials``: ``trials.parquet`` (names the arms stopped before their first look)."""
    groups, history = _groups(sweep_dir), rounds.get("rounds", [])
    design = history[-1].get("seeds", {}) if history else rounds.get("seeds", {})
    last: dict[str, dict[str, Any]] = {}  # group (or the arm's label, without plan.json) -> its last look
    for r in history:
        for look in r.get("looks", []):
            ids = look.get("trial_ids") or []
            last[groups.get(ids[0], str(look["arm"])) if ids else str(look["arm"])] = look
    stops = {g: s for g, s in rounds.get("stopped", {}).items() if not s.get("continued")}
    out = []
    for group, look in last.items():
        stop = stops.get(group)
        seeds = int(design.get(group, look.get("n_seeds") or 0)) if stop else int(look.get("n_seeds") or 0)
        at = None if stop is None else _number(stop.get("tflops"))
        out.append(_from_look(look, seeds, _rounds_in(group, history), at))
    for group, stop in stops.items():
        if group in last:
            continue
        base = _baseline_group(group, set(design))
        out.append(
            ArmRounds(
                _arm_of_group(group, groups, trials), math.nan, int(design.get(group, 0)),
                int(design.get(base, 0)) if base else 0, _rounds_in(group, history), "slower", math.nan, math.nan,
                math.nan, math.nan, _number(stop.get("tflops")),
            )
        )  # fmt: skip
    return out


def seeds_not_asked(sweep_dir: Path) -> set[str]:
    """The planned trials (every seed up to max) that the rounds have not asked for: an adaptive sweep's trials that
    are not missing when they never start. Empty without ``rounds.json``."""
    rounds = read_rounds(sweep_dir)
    if rounds is None:
        return set()
    plan = read_json(SweepDir.of(sweep_dir).plan_file) or {}
    asked = rounds.get("seeds", {})
    return {
        t["trial_id"]
        for t in plan.get("trials", [])
        if int(t.get("assignments", {}).get("seed", 0)) >= int(asked.get(seed_group(t.get("assignments", {})), 0))
    }


def compute_ratio(rounds: dict[str, Any]) -> float:
    """The last round's design cost over the fixed design's (every arm and baseline at max seeds), in TFLOPs; NaN
    when ``rounds.json`` records no cost."""
    history = rounds.get("rounds", [])
    cost = (history[-1].get("cost") or {}) if history else {}
    fixed = (history[-1].get("fixed_cost") or {}) if history else {}
    spent, whole = _number(cost.get("tflops")), _number(fixed.get("tflops"))
    return spent / whole if whole > 0 else math.nan


# ------------------------------------------------------------------------------------------------- report.md
def _interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "–"
    return f"{low:.3g}x to " + ("unbounded" if math.isinf(high) else f"{high:.3g}x")


def _table(arms: list[ArmRounds]) -> str:
    table = pd.DataFrame(
        {
            "arm": [a.arm for a in arms],
            "target FID": [a.target_fid for a in arms],
            "seeds": [a.seeds for a in arms],
            "baseline seeds": [a.baseline_seeds for a in arms],
            "rounds": [a.rounds for a in arms],
            "verdict": [a.verdict_text for a in arms],
            "speed-up": [a.speedup for a in arms],
            "interval at 1 - alpha": [_interval(a.low, a.high) for a in arms],
            "alpha spent": [a.alpha for a in arms],
        }
    )
    return markdown_table(table, {"target FID": ".2f", "speed-up": ".3g", "alpha spent": ".3g"})


def _rule(spec: dict[str, Any], confidence: float) -> str:
    seeds = (spec.get("sweep") or {}).get("seeds") or {}
    return (
        f"Seeds were added round by round (`sweep.seeds`: min {seeds.get('min', '?')}, max {seeds.get('max', '?')}) "
        "to every arm whose verdict against its baseline was still open: each look is a Welch t interval on the "
        "per-seed log training TFLOPs to first reach the target FID, at the error a power-family alpha spending "
        f"allows that look, so that the {confidence:.0%} confidence (`report.confidence`) holds over all of an arm's "
        "looks; a seed that never reaches the target counts conservatively (each end of the interval takes it the "
        "way that can only hurt its own verdict), and futility (an arm unlikely to be decided by max seeds gets no "
        f"more) is non-binding: it never makes a verdict (maskdm-sweeps' `{METHOD}`)."
    )


def _compute(rounds: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    history = rounds.get("rounds", [])
    cost = (history[-1].get("cost") or {}) if history else {}
    fixed = (history[-1].get("fixed_cost") or {}) if history else {}
    ratio = compute_ratio(rounds)
    if math.isnan(ratio):
        return []
    top = ((spec.get("sweep") or {}).get("seeds") or {}).get("max", "max")
    return [
        f"Compute: this design cost {cost['tflops']:.4g} TFLOPs (about {_number(cost.get('device_hours')):.3g} "
        f"device-hours, estimated) against {fixed['tflops']:.4g} TFLOPs ({_number(fixed.get('device_hours')):.3g} "
        f"device-hours) for the fixed design, every arm and baseline at {top} seeds: {ratio:.0%} of it "
        "(training and evaluation from nothing, each pre-training once, a trial stopped as behind at the share it "
        "ran).",
        "",
    ]


def _budget(spec: dict[str, Any]) -> str:
    budget = (spec.get("sweep") or {}).get("budget") or {}
    if budget.get("tflops") is not None:
        return f"`sweep.budget.tflops`: {budget['tflops']:g}"
    if budget.get("device_hours") is not None:
        return f"`sweep.budget.device_hours`: {budget['device_hours']:g}"
    return "`sweep.budget`"


def _ending(sweep_dir: Path, rounds: dict[str, Any], arms: list[ArmRounds], spec: dict[str, Any]) -> list[str]:
    history, ended = rounds.get("rounds", []), rounds.get("ended")
    left = list(history[-1].get("left_open_by_budget", [])) if history else []
    if ended == "budget" and not left:
        left = [a.arm for a in arms if a.verdict == "open" and a.stopped_tflops is None]
    lines = []
    if left or ended == "budget":
        lines.append(
            f"The budget ({_budget(spec)}) ran out with {len(left)} verdict{'s' if len(left) != 1 else ''} still "
            f"open: {', '.join(left) or 'none'}. Raise `sweep.budget` and `run` the spec again (the budget is not "
            "part of the spec's hash): the rounds continue where they stopped."
        )
    if ended is None:
        lines.append(
            f"The rounds are still going ({len(history)} finished; the verdicts above are the last look's): "
            f"`maskdm-sweep resume {sweep_dir}` continues them, finished trials are not trained again."
        )
    elif ended == "decided":
        lines.append(f"The rounds ended after round {len(history)}: every verdict is decided, futile or at max seeds.")
    if any(a.stopped_tflops is not None for a in arms):
        lines.append(
            "Arms stopped as behind (`sweep.stop_behind`) keep their checkpoints (status `stopped` in "
            "`trials.parquet`); a `run` with a larger `sweep.budget` continues them."
        )
    return lines + [""] if lines else []


def rounds_section(sweep_dir: Path, trials: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """``report.md``'s "Seeds until decided" (nothing when the sweep has no ``rounds.json``)."""
    rounds = read_rounds(sweep_dir)
    if rounds is None:
        return []
    confidence = float((spec.get("report") or {}).get("confidence", 0.9))
    arms = arm_rounds(sweep_dir, rounds, trials)
    lines = ["## Seeds until decided", "", _rule(spec, confidence), ""]
    if arms:
        lines += [
            "Per arm: the seeds its last look rests on and its baseline's, the rounds it trained seeds in, its "
            "verdict, and the speed-up (the baseline's TFLOPs to the target FID over the arm's, geometric mean over "
            "seeds) with its interval at the level that look spent (alpha spent: its share of the "
            f"{1 - confidence:.0%} error).",
            "",
            _table(arms),
            "",
        ]
    else:
        lines += ["No look yet: the first round has not finished.", ""]
    return lines + _compute(rounds, spec) + _ending(sweep_dir, rounds, arms, spec)


# ------------------------------------------------------------------------------------------------- summary, MLflow
def _trials_of(sweep_dir: Path) -> pd.DataFrame | None:
    path = SweepDir.of(sweep_dir).trials_parquet
    return pd.read_parquet(path) if path.exists() else None


def summary_lines(sweep_dir: Path) -> list[str]:
    """One line per arm for the summary ``run``, ``resume`` and ``report`` print (none without ``rounds.json``)."""
    rounds = read_rounds(sweep_dir)
    if rounds is None:
        return []
    ratio = compute_ratio(rounds)
    share = "" if math.isnan(ratio) else f"; compute {ratio:.0%} of the fixed design"
    return [
        f"seeds until decided: {a.arm}: {a.verdict_text} after {a.seeds} seeds (baseline {a.baseline_seeds}), "
        f"{a.rounds} round{'s' if a.rounds != 1 else ''}{share}"
        for a in arm_rounds(sweep_dir, rounds, _trials_of(sweep_dir))
    ]


def rounds_answer(sweep_dir: Path) -> tuple[dict[str, float], dict[str, str]]:
    """The parent MLflow run's metrics ``rounds/<arm>/seeds``, ``rounds/<arm>/baseline_seeds`` and
    ``rounds/compute_vs_fixed``, and its tags ``verdict/<arm>`` (arm names made MLflow-safe); empty without
    ``rounds.json``."""
    rounds = read_rounds(sweep_dir)
    if rounds is None:
        return {}, {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for a in arm_rounds(sweep_dir, rounds, _trials_of(sweep_dir)):
        name = mlflow_key(a.arm)
        metrics[f"rounds/{name}/seeds"] = float(a.seeds)
        metrics[f"rounds/{name}/baseline_seeds"] = float(a.baseline_seeds)
        tags[f"verdict/{name}"] = a.verdict_text
    ratio = compute_ratio(rounds)
    if not math.isnan(ratio):
        metrics["rounds/compute_vs_fixed"] = ratio
    return metrics, tags


def rounds_json(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every arm of the rounds as plain data (``report --json``); empty without ``rounds.json``."""
    rounds = read_rounds(sweep_dir)
    if rounds is None:
        return []
    ratio = compute_ratio(rounds)

    def plain(value: Any) -> Any:  # JSON has no NaN or infinity
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return [
        {
            **{k: plain(v) for k, v in asdict(a).items()},
            "verdict_text": a.verdict_text,
            "compute_vs_fixed": plain(ratio),
        }
        for a in arm_rounds(sweep_dir, rounds, _trials_of(sweep_dir))
    ]
