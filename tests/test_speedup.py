"""The speed-up to a target FID on synthetic FID-vs-compute curves whose answers are known, and the coverage of its
bootstrap interval in a small simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskdm_sweeps.results.analysis import speedup_table
from maskdm_sweeps.results.speedup import Curves, arm_speedup, first_crossing
from maskdm_sweeps.testing import synthetic_tables as _tables
from maskdm_sweeps.testing import synthetic_trial as _trial

# Baseline: 1 TFLOP per step, FID 100 -> 10 over 100 steps. Its final FID 10 is reached at 100 TFLOPs.
BASELINE = {25: 60.0, 50: 40.0, 75: 20.0, 100: 10.0}


def test_an_arm_that_reaches_the_baselines_final_fid_at_a_quarter_of_its_compute_has_speedup_4():
    # pre-training 5 TFLOPs, fine-tuning 1 TFLOP/step: FID 10 first at step 20 -> 25 TFLOPs in all
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE, 0.0, 1.0),
        _trial("m0", "patch r=0.9", 0, {10: 30.0, 20: 10.0, 40: 8.0}, 5.0, 1.0),
    )
    row = speedup_table(trials, curves).iloc[0]
    assert row["target"] == "baseline final FID" and row["target_fid"] == 10.0
    assert row["baseline_tflops"] == pytest.approx(100.0) and row["arm_tflops"] == pytest.approx(25.0)
    assert row["speedup"] == pytest.approx(4.0)
    assert bool(row["reached"]) and row["verdict"] == "one seed: no interval"


def test_an_arm_that_never_gets_there_is_not_reached_and_has_no_speedup():
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE, 0.0, 1.0),
        _trial("m0", "patch r=0.9", 0, {20: 50.0, 40: 30.0, 60: 12.0}, 5.0, 1.0),
    )
    row = speedup_table(trials, curves).iloc[0]
    assert not bool(row["reached"]) and math.isnan(row["speedup"]) and row["verdict"] == "not reached"


def test_a_crossing_between_evaluations_is_linearly_interpolated():
    # the arm passes FID 10 only between step 20 (FID 30) and step 40 (FID 0): at step 20 + 20 * 20/30
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE, 0.0, 1.0), _trial("m0", "patch r=0.9", 0, {20: 30.0, 40: 0.0}, 5.0, 1.0)
    )
    row = speedup_table(trials, curves).iloc[0]
    arm = 5.0 + 20 + 20 * (30 - 10) / 30
    assert row["arm_tflops"] == pytest.approx(arm)
    assert row["speedup"] == pytest.approx(100.0 / arm)


def test_several_targets_from_the_spec_give_one_row_each_with_their_own_answers():
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE, 0.0, 1.0),
        _trial("m0", "patch r=0.9", 0, {10: 30.0, 20: 10.0, 40: 8.0}, 5.0, 1.0),
    )
    table = speedup_table(trials, curves, targets=[40.0, 10.0, 5.0])
    assert list(table["target_fid"]) == [40.0, 10.0, 5.0] and set(table["target"]) == {"spec"}
    at40, at10, at5 = (table.iloc[i] for i in range(3))
    # FID 40: baseline at step 50 (50 TFLOPs); arm between 0... its first evaluation (FID 30) is already below:
    # reached at that evaluation, 5 + 10 = 15 TFLOPs
    assert at40["baseline_tflops"] == pytest.approx(50.0) and at40["arm_tflops"] == pytest.approx(15.0)
    assert at10["speedup"] == pytest.approx(4.0)
    assert not bool(at5["reached"]) and not bool(at5["baseline_reached"]) and math.isnan(at5["speedup"])


def test_the_arm_curve_is_the_mean_over_its_seeds():
    # seeds at 20 and 0 after 20 steps: mean 10 at step 20 -> 25 TFLOPs, though one seed alone is there earlier
    trials, curves = _tables(
        _trial("b0", "baseline", 0, BASELINE, 0.0, 1.0),
        _trial("m0", "patch r=0.9", 0, {10: 40.0, 20: 20.0}, 5.0, 1.0),
        _trial("m1", "patch r=0.9", 1, {10: 20.0, 20: 0.0}, 5.0, 1.0),
    )
    row = speedup_table(trials, curves).iloc[0]
    assert row["n_seeds"] == 2 and row["arm_tflops"] == pytest.approx(25.0)
    assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]


def test_first_crossing_vectorised_matches_a_loop():
    rng = np.random.default_rng(0)
    compute = np.cumsum(rng.uniform(0.5, 2.0, 12))
    curves = np.minimum.accumulate(rng.uniform(0, 100, (50, 12)), axis=1) + rng.uniform(0, 5, (50, 12))
    target = 20.0
    got = first_crossing(compute, curves, target)
    for row, value in zip(curves, got, strict=True):
        hits = np.nonzero(row <= target)[0]
        if not len(hits):
            assert math.isnan(value)
            continue
        i = hits[0]
        want = (
            compute[0]
            if i == 0
            else compute[i - 1] + (row[i - 1] - target) / (row[i - 1] - row[i]) * (compute[i] - compute[i - 1])
        )
        assert value == pytest.approx(want)


def _population_curves(speedup: float, seeds: int, rng: np.random.Generator, compute: np.ndarray) -> np.ndarray:
    """FID(c) = 200 / (1 + c * rate) + 5 per seed, with a seed's learning rate spread log-normally around the mean
    (an arm learns ``speedup`` times faster per TFLOP): ``(seeds, P)``."""
    rate = speedup * np.exp(rng.normal(0.0, 0.25, (seeds, 1)))
    return 200.0 / (1.0 + compute[None, :] * rate / 10.0) + 5.0


def test_the_90_percent_bootstrap_interval_covers_the_true_speedup_about_90_percent_of_the_time():
    compute = np.linspace(1.0, 100.0, 40)
    target = 30.0
    rng = np.random.default_rng(1)
    # the truth: the ratio of the crossings of the population mean curves (many seeds)
    truth_arm = Curves(compute, _population_curves(3.0, 100_000, rng, compute)).crossing(target)
    truth_base = Curves(compute, _population_curves(1.0, 100_000, rng, compute)).crossing(target)
    truth = float(truth_base / truth_arm)
    hits, runs = 0, 300
    for k in range(runs):
        arm = Curves(compute, _population_curves(3.0, 10, rng, compute))
        base = Curves(compute, _population_curves(1.0, 10, rng, compute))
        row = arm_speedup(arm, base, target, confidence=0.9, resamples=500, seed=k)
        hits += row["speedup_low"] <= truth <= row["speedup_high"]
    coverage = hits / runs
    # percentile bootstrap with 10 seeds a side is known to run a little under nominal; 0.78 catches a broken one
    assert 0.78 <= coverage <= 0.97, coverage
