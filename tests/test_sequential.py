"""Seeds until decided (``results/sequential.py``): the spending, the interval against scipy's Welch t, censoring,
futility, and the error over all looks in a small simulation (``benchmarks/bench_sequential.py``'s core)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from maskdm_sweeps.results.sequential import Costs, SeedRule, look, seed_costs

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    # benchmarks/ is a folder of scripts, not a package: load the module by path, as tests/test_benchmarks.py does
    # (registered in sys.modules so that its dataclasses can resolve their own module).
    spec = importlib.util.spec_from_file_location("bench_sequential", ROOT / "benchmarks" / "bench_sequential.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rho", [1.5, 2.0, 3.0])
@pytest.mark.parametrize(("low", "high"), [(2, 8), (3, 10), (2, 3)])
def test_the_errors_spent_over_the_looks_sum_to_one_minus_confidence_and_grow(rho, low, high):
    rule = SeedRule(min_seeds=low, max_seeds=high, confidence=0.9, spending_power=rho)
    alphas = np.array([rule.alpha_at(n) for n in range(low, high + 1)])
    assert len(alphas) == rule.looks() and (alphas > 0).all()
    assert alphas.sum() == pytest.approx(0.1, abs=1e-12)
    # convex spending: every increment after the first look is larger than the one before it
    assert (np.diff(alphas[1:]) > 0).all()
    with pytest.raises(ValueError):
        rule.alpha_at(low - 1)
    with pytest.raises(ValueError):
        rule.alpha_at(high + 1)


def test_the_defaults_spend_less_at_every_look_than_at_the_next():
    alphas = [SeedRule().alpha_at(n) for n in range(2, 9)]
    assert alphas == sorted(alphas) and alphas[0] == pytest.approx(0.1 / 16)  # (2 / 8) ** 2 of 10%


def test_the_interval_is_scipys_welch_t_on_the_log_costs():
    rng = np.random.default_rng(3)
    for n_arm, n_base in [(2, 2), (3, 5), (6, 4), (8, 8)]:
        arm, base = np.exp(rng.normal(-0.3, 0.2, n_arm)), np.exp(rng.normal(0, 0.35, n_base))
        rule = SeedRule(max_seeds=8)
        v = look(Costs.uncensored(arm), Costs.uncensored(base), rule)
        level = 1 - rule.alpha_at(n_arm)
        ci = stats.ttest_ind(np.log(base), np.log(arm), equal_var=False).confidence_interval(confidence_level=level)
        assert (v.low, v.high) == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=1e-9)
        assert v.speedup == pytest.approx(math.exp(np.log(base).mean() - np.log(arm).mean()))
        assert v.alpha == rule.alpha_at(n_arm) and (v.n_arm, v.n_baseline) == (n_arm, n_base)


def test_a_censored_seed_opens_the_bound_its_verdict_needs():
    arm = np.array([0.4, 0.42, 0.41])  # clearly faster than the baseline
    base = np.array([1.0, 1.02, 0.98])
    clear = look(Costs.uncensored(arm), Costs.uncensored(base), SeedRule())
    assert clear.verdict == "faster" and clear.low > 1
    censored_arm = look(Costs(arm, np.array([False, False, True])), Costs.uncensored(base), SeedRule())
    assert censored_arm.low == 0 and censored_arm.high == clear.high and not censored_arm.decided
    # the other way round: the arm clearly slower, a censored baseline seed makes the high bound infinite
    slow = look(Costs.uncensored(base), Costs.uncensored(arm), SeedRule())
    assert slow.verdict == "slower" and slow.high < 1
    censored_base = look(Costs.uncensored(base), Costs(arm, np.array([True, False, False])), SeedRule())
    assert censored_base.high == math.inf and censored_base.low == slow.low and not censored_base.decided


def test_one_seed_on_a_side_gives_no_interval_and_equal_seeds_no_division_by_zero():
    one = look(Costs.uncensored([0.5]), Costs.uncensored([1.0, 1.1]), SeedRule(min_seeds=1))
    assert (one.low, one.high, one.verdict) == (0.0, math.inf, "open") and one.wants_seed
    one_base = look(Costs.uncensored([0.5, 0.52]), Costs.uncensored([1.0]), SeedRule())
    assert (one_base.low, one_base.high, one_base.verdict) == (0.0, math.inf, "open") and one_base.baseline_limits
    with pytest.raises(ValueError):  # an arm below min_seeds is not at a look
        look(Costs.uncensored([0.5]), Costs.uncensored([1.0, 1.1]), SeedRule())
    equal = look(Costs.uncensored([0.5, 0.5]), Costs.uncensored([1.0, 1.0]), SeedRule())
    assert equal.verdict == "faster" and equal.low == pytest.approx(2.0, rel=1e-4)  # the variance floor: sd 1e-6
    same = look(Costs.uncensored([1.0, 1.0]), Costs.uncensored([1.0, 1.0]), SeedRule())
    assert same.speedup == 1.0 and same.low <= 1 <= same.high


def test_a_clearly_equal_pair_is_futile_and_max_seeds_ends_the_arm():
    arm, base = Costs.uncensored([0.99, 1.01, 1.0]), Costs.uncensored([1.0, 0.995, 1.005])
    futile = look(arm, base, SeedRule())
    assert futile.verdict == "futile" and futile.conditional_power < 0.2 and not futile.wants_seed
    assert look(arm, base, SeedRule(futility=0.0)).verdict == "open"  # futility off: add seeds until max
    at_max = look(arm, base, SeedRule(min_seeds=2, max_seeds=3))
    assert at_max.verdict == "undecided at max" and not at_max.wants_seed
    # a wide, promising estimate is worth more seeds
    promising = look(Costs.uncensored([0.6, 1.0]), Costs.uncensored([1.0, 1.3]), SeedRule())
    assert promising.verdict == "open" and promising.conditional_power > 0.2


def test_the_baseline_gets_a_seed_when_its_term_of_the_standard_error_limits():
    noisy_base = look(Costs.uncensored([0.5, 0.51, 0.5]), Costs.uncensored([0.8, 1.3, 1.0]), SeedRule(futility=0))
    noisy_arm = look(Costs.uncensored([0.3, 0.7, 0.5]), Costs.uncensored([1.0, 1.01, 1.0]), SeedRule(futility=0))
    assert noisy_base.baseline_limits and not noisy_arm.baseline_limits


def test_seed_costs_are_first_crossings_censored_at_the_last_evaluation():
    compute = np.array([1.0, 2.0, 3.0, 4.0])
    fid = np.array(
        [
            [10.0, 8.0, 4.0, 2.0],  # crosses 6 between 2 (FID 8) and 3 (FID 4): 2 + (8 - 6) / (8 - 4) = 2.5
            [10.0, 9.0, 8.0, 7.0],  # never: censored at 4
            [5.0, 4.0, 3.0, 2.0],  # already below at the first evaluation: 1
        ]
    )
    costs = seed_costs(compute, fid, target=6.0)
    assert costs.values.tolist() == [2.5, 4.0, 1.0] and costs.censored.tolist() == [False, True, False]
    assert costs.n == 3


def test_the_spending_keeps_the_error_over_all_looks_where_no_correction_does_not():
    bench = _load_bench()
    sweeps = 400
    outcomes = bench.simulate(1.0, sweeps, SeedRule(), sigma=0.2, seed=0)
    margin = 3 * math.sqrt(0.1 * 0.9 / sweeps)  # 3 binomial standard errors at the goal's 10%
    spending = bench.wrong(outcomes["spending"].verdicts, 1.0).mean()
    uncorrected = bench.wrong(outcomes["no correction"].verdicts, 1.0).mean()
    assert spending <= 0.10 + margin, spending
    assert uncorrected > 0.2, uncorrected
    assert outcomes["spending"].compute(8).mean() < 0.6  # and it stops early
