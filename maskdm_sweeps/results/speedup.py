"""The speed-up to a target FID, the method's own measure, with a bootstrap interval over seeds.

For an arm and a target FID: average the FID-vs-compute curves of its seeds (compute: training TFLOPs, the arm's
whole pre-training included), find where the mean curve first reaches the target (linear interpolation between
evaluations), and do the same for the baseline. The speed-up is ``baseline compute / arm compute``: 3 means the arm
reaches the target FID with a third of the baseline's training compute. By default the target is the baseline's
final mean FID, as in the paper's "reaches the DDPM baseline's quality with a fraction of its cost".

The interval resamples the arm's seeds and the baseline's seeds with replacement (independently), recomputes both
mean curves and the ratio, and takes the percentiles. A resample whose arm never reaches the target counts as a
speed-up of 0; one whose baseline never reaches it as infinite. With one seed on both sides there is no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

SPEEDUP_COLUMNS = ["arm", "target_fid", "target", "n_seeds", "n_baseline_seeds", "arm_tflops", "baseline_tflops",
                   "speedup", "speedup_low", "speedup_high", "reached", "baseline_reached", "verdict"]


def first_crossing(compute: np.ndarray, fid: np.ndarray, target: float) -> np.ndarray:
    """The compute at which each curve first reaches ``fid <= target``, linearly interpolated; NaN where never.

    ``compute`` ``(P,)`` increasing, ``fid`` ``(..., P)``. Where the first evaluation is already at or below the
    target, the crossing is that evaluation's compute (it happened there or earlier: an upper bound).
    """
    fid = np.asarray(fid, dtype=float)
    below = fid <= target  # (..., P)
    reached = below.any(axis=-1)
    i = below.argmax(axis=-1)  # first index at or below the target (0 where none)
    prev = np.maximum(i - 1, 0)
    f_i, f_prev = np.take_along_axis(fid, i[..., None], -1)[..., 0], np.take_along_axis(fid, prev[..., None], -1)[..., 0]
    c_i, c_prev = compute[i], compute[prev]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(f_prev > f_i, (f_prev - target) / (f_prev - f_i), 1.0)
    crossing = np.where(i == 0, c_i, c_prev + np.clip(frac, 0.0, 1.0) * (c_i - c_prev))
    return np.where(reached, crossing, np.nan)


@dataclass(frozen=True)
class Curves:
    """The FID curves of one arm's seeds on a common compute grid: ``compute (P,)``, ``fid (seeds, P)``."""

    compute: np.ndarray
    fid: np.ndarray

    @classmethod
    def of(cls, points: pd.DataFrame) -> "Curves":
        """From rows ``trial_id, step, tflops, fid`` of one arm: the evaluations every seed has."""
        table = points.pivot_table(index="trial_id", columns="step", values="fid", aggfunc="first").dropna(axis=1)
        compute = points.groupby("step")["tflops"].mean().reindex(table.columns).to_numpy(dtype=float)
        order = np.argsort(compute, kind="stable")
        return cls(compute[order], table.to_numpy(dtype=float)[:, order])

    @property
    def seeds(self) -> int:
        return self.fid.shape[0]

    def crossing(self, target: float, resample: np.ndarray | None = None) -> np.ndarray:
        """Crossing of the mean curve over all seeds (scalar array), or over each row of seed indices
        ``resample`` ``(B, seeds)`` (``(B,)``)."""
        mean = self.fid.mean(axis=0) if resample is None else self.fid[resample].mean(axis=1)  # (P,) or (B, P)
        return first_crossing(self.compute, mean, target)


def speedup_ratio(baseline_compute: np.ndarray | float, arm_compute: np.ndarray | float) -> np.ndarray:
    """``baseline / arm``, with never-reached arms as 0 and never-reached baselines as infinity (NaN if neither)."""
    b, a = np.asarray(baseline_compute, dtype=float), np.asarray(arm_compute, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = b / a
    ratio = np.where(np.isnan(a) & ~np.isnan(b), 0.0, ratio)
    return np.where(np.isnan(b) & ~np.isnan(a), np.inf, ratio)


def bootstrap_interval(arm: Curves, baseline: Curves, target: float, confidence: float = 0.9,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the speed-up over seed resamples (NaN, NaN with one seed on both sides)."""
    if arm.seeds < 2 and baseline.seeds < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ratios = speedup_ratio(baseline.crossing(target, rng.integers(0, baseline.seeds, (resamples, baseline.seeds))),
                           arm.crossing(target, rng.integers(0, arm.seeds, (resamples, arm.seeds))))
    ratios = ratios[~np.isnan(ratios)]
    if not len(ratios):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf")  # no interpolation: inf stays inf
    return float(low), float(high)


def verdict(speedup: float, low: float, high: float, reached: bool, baseline_reached: bool) -> str:
    """One word for the table: ``faster`` / ``slower`` only when the whole interval says so."""
    if not reached:
        return "not reached"
    if not baseline_reached:
        return "baseline not reached"
    if math.isnan(low):
        return "one seed: no interval"
    if low > 1:
        return "faster"
    if high < 1:
        return "slower"
    return "no clear difference"


def arm_speedup(arm: Curves, baseline: Curves, target: float, confidence: float = 0.9, resamples: int = 2000,
                seed: int = 0) -> dict:
    """The speed-up of one arm over the baseline at one target FID: compute to reach it on both sides, the ratio,
    its interval and a verdict (see :data:`SPEEDUP_COLUMNS`)."""
    a, b = float(arm.crossing(target)), float(baseline.crossing(target))
    ratio = float(speedup_ratio(b, a))
    low, high = bootstrap_interval(arm, baseline, target, confidence, resamples, seed)
    reached, baseline_reached = not math.isnan(a), not math.isnan(b)
    return {"target_fid": target, "n_seeds": arm.seeds, "n_baseline_seeds": baseline.seeds, "arm_tflops": a,
            "baseline_tflops": b, "speedup": ratio if reached and baseline_reached else math.nan,
            "speedup_low": low, "speedup_high": high, "reached": reached, "baseline_reached": baseline_reached,
            "verdict": verdict(ratio, low, high, reached, baseline_reached)}
