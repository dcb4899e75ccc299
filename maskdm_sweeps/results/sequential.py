"""Seeds until decided: an arm's verdict against the baseline at each look, with the error spread over the looks.

A sweep with ``sweep.seeds: {min, max, until: decided}`` first runs ``min`` seeds of every arm and of the baseline,
then, round after round, adds one seed to every arm whose verdict is still open. Each round is a *look* at the data,
and looking repeatedly at a fixed level inflates the error (7 looks at 10% give about 30% wrong verdicts between two
equal arms). So the look with ``n`` arm seeds uses its own level ``alpha_n`` from a power-family spending function
(Lan & DeMets 1983): the cumulative error spent by ``n`` seeds is ``(1 - confidence) * (n / max) ** rho``. The
increments sum to ``1 - confidence`` over the looks, and by the union bound the chance that *any* look's interval
misses the true speed-up is at most that sum, whatever the correlation between looks.

Each look is a Welch t interval on the per-seed log costs (the compute each seed needed to reach the target FID),
mapped to the speed-up scale ``baseline / arm``. Seeds that never reached the target are censored (their value is the
compute their run ended at, a lower bound); each bound substitutes them in the direction that can only hurt its own
verdict (see :func:`look`). An open arm whose conditional power to decide by ``max`` seeds is below
``SeedRule.futility`` is called futile: it gets no more seeds. Futility only ever stops a look from deciding, so it
cannot raise the error (non-binding). ``benchmarks/bench_sequential.py`` simulates the rule; docs/method.md has its
numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from maskdm_sweeps.results.speedup import first_crossing

# A side whose seeds all cost the same has sample variance 0; the floor keeps the standard error and the
# Welch-Satterthwaite degrees of freedom finite (a log-cost sd of 1e-6 is far below any real seed noise).
VARIANCE_FLOOR = 1e-12
VERDICTS = ("faster", "slower", "open", "futile", "undecided at max")


@dataclass(frozen=True)
class SeedRule:
    """How seeds are added: min/max seeds per arm, the confidence kept over all looks, the spending, futility."""

    min_seeds: int = 2
    max_seeds: int = 8
    confidence: float = 0.9  # two-sided, kept over all looks of one arm (union bound over looks)
    spending_power: float = 2.0  # rho of the power-family spending alpha * (n / max_seeds) ** rho
    futility: float = 0.2  # stop adding seeds when conditional power at max_seeds is below this; 0: never

    def __post_init__(self) -> None:
        if not 1 <= self.min_seeds <= self.max_seeds:
            raise ValueError(f"need 1 <= min_seeds <= max_seeds, got {self.min_seeds}, {self.max_seeds}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.spending_power <= 0:
            raise ValueError(f"spending_power must be > 0, got {self.spending_power}")
        if not 0 <= self.futility < 1:
            raise ValueError(f"futility must be in [0, 1), got {self.futility}")

    def _spent_by(self, n: int) -> float:
        """Cumulative error spent by the look with ``n`` arm seeds (information fraction ``n / max_seeds``)."""
        return (1 - self.confidence) * (n / self.max_seeds) ** self.spending_power

    def alpha_at(self, n: int) -> float:
        """The error spent at the look with n arm seeds (min_seeds <= n <= max_seeds); the increments over
        n = min..max sum to 1 - confidence.

        The first look spends everything up to its information fraction, ``(1 - confidence) (min / max) ** rho``;
        each later look the increment since the previous one. For ``rho > 1`` the increments after the first grow
        with ``n`` (early looks are strict, the last is close to the fixed design's level).
        """
        if not self.min_seeds <= n <= self.max_seeds:
            raise ValueError(f"a look needs {self.min_seeds} <= arm seeds <= {self.max_seeds}, got {n}")
        before = self._spent_by(n - 1) if n > self.min_seeds else 0.0
        return self._spent_by(n) - before

    def looks(self) -> int:
        """How many looks an arm can have: one per seed count from ``min_seeds`` to ``max_seeds``."""
        return self.max_seeds - self.min_seeds + 1


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool
class Costs:
    """Each seed's compute to reach the target (any unit, e.g. TFLOPs), and which seeds never reached it within their
    run (censored: the value is then the compute the run ended at, a lower bound)."""

    values: np.ndarray  # (S,) > 0
    censored: np.ndarray  # (S,) bool

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=float).reshape(-1)
        censored = np.asarray(self.censored, dtype=bool).reshape(-1)
        if values.shape != censored.shape:
            raise ValueError(f"values {values.shape} and censored {censored.shape} differ in length")
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError("costs must be finite and > 0 (a log is taken)")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "censored", censored)

    @classmethod
    def uncensored(cls, values: np.ndarray | list[float]) -> Costs:
        """Costs of seeds that all reached the target."""
        values = np.asarray(values, dtype=float)
        return cls(values, np.zeros(values.shape, dtype=bool))

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def first(self, n: int) -> Costs:
        """The first ``n`` seeds (a simulated sweep's seeds as they arrive)."""
        return Costs(self.values[:n], self.censored[:n])


def seed_costs(compute: np.ndarray, fid: np.ndarray, target: float) -> Costs:
    """From FID curves on a common compute grid (compute (P,) increasing, fid (S, P)): each seed's first crossing of
    fid <= target (use maskdm_sweeps.results.speedup.first_crossing), censored at compute[-1] where never."""
    compute = np.asarray(compute, dtype=float)
    crossing = first_crossing(compute, np.atleast_2d(np.asarray(fid, dtype=float)), target)  # (S,), NaN: never
    censored = np.isnan(crossing)
    return Costs(np.where(censored, compute[-1], crossing), censored)


@dataclass(frozen=True)
class Look:
    """The verdict on one arm at one look, and what the sweep should do next."""

    n_arm: int
    n_baseline: int
    alpha: float  # the error spent at this look
    speedup: float  # exp(mean log baseline cost - mean log arm cost), censored values as their bounds
    low: float  # the interval at level 1 - alpha (speed-up scale: baseline / arm)
    high: float
    verdict: str  # one of VERDICTS
    conditional_power: float  # NaN where a side has a single seed
    baseline_limits: bool  # the baseline's term of the standard error is at least the arm's: add a baseline seed

    @property
    def decided(self) -> bool:
        return self.verdict in ("faster", "slower")

    @property
    def wants_seed(self) -> bool:
        return self.verdict == "open"


@dataclass(frozen=True)
class _Welch:
    """Welch's statistics of ``mean(log baseline) - mean(log arm)`` (the log speed-up)."""

    diff: float
    se: float
    df: float
    var_arm: float  # sample variances of the log costs, floored
    var_baseline: float


def _welch(log_arm: np.ndarray, log_baseline: np.ndarray) -> _Welch:
    """Both sides need 2 seeds or more."""
    n_a, n_b = len(log_arm), len(log_baseline)
    v_a = max(float(np.var(log_arm, ddof=1)), VARIANCE_FLOOR)
    v_b = max(float(np.var(log_baseline, ddof=1)), VARIANCE_FLOOR)
    term_a, term_b = v_a / n_a, v_b / n_b
    df = (term_a + term_b) ** 2 / (term_a**2 / (n_a - 1) + term_b**2 / (n_b - 1))  # Welch-Satterthwaite
    diff = float(np.mean(log_baseline) - np.mean(log_arm))
    return _Welch(diff, math.sqrt(term_a + term_b), df, v_a, v_b)


def _conditional_power(w: _Welch, n_arm: int, n_baseline: int, rule: SeedRule) -> float:
    """The chance that the last look (both sides at ``max_seeds``, or more where a side has more, at that look's
    alpha) decides, if the true log speed-up is the current estimate and the variances are the current ones.

    The final difference is the current one plus the mean of the seeds still to come, weighted by their share:
    ``D ~ N(d, v_a (N_a - n_a) / N_a^2 + v_b (N_b - n_b) / N_b^2)``; it decides when ``|D| > t * se_final``. Only
    the tail on the side of ``d`` is counted (the other is negligible wherever this is near the futility level).
    """
    final_a, final_b = max(rule.max_seeds, n_arm), max(rule.max_seeds, n_baseline)
    term_a, term_b = w.var_arm / final_a, w.var_baseline / final_b
    df = (term_a + term_b) ** 2 / (term_a**2 / (final_a - 1) + term_b**2 / (final_b - 1))
    critical = float(special.stdtrit(df, 1 - rule.alpha_at(rule.max_seeds) / 2)) * math.sqrt(term_a + term_b)
    to_come = (w.var_arm * (final_a - n_arm) / final_a**2) + (w.var_baseline * (final_b - n_baseline) / final_b**2)
    return float(special.ndtr((abs(w.diff) - critical) / math.sqrt(max(to_come, VARIANCE_FLOOR))))


def look(arm: Costs, baseline: Costs, rule: SeedRule, alpha: float | None = None) -> Look:
    """The verdict at one look (the arm's n seeds = arm.n, the baseline's all seeds).

    ``alpha``: the level to spend at this look instead of ``rule.alpha_at(arm.n)`` (a fixed design, or the
    simulation's Bonferroni and uncorrected rules); ``None`` for the rule's spending.

    Interval: Welch t on the log costs, two-sided at ``1 - alpha``, exponentiated. Censored seeds (never reached the
    target: the value is a lower bound of their cost) enter each bound on the side that can only make that bound
    less favourable to its own verdict. The low bound (what "faster" needs) counts a censored arm seed as +infinity
    (so ``low = 0`` as soon as one arm seed is censored) and a censored baseline seed as its end value (the baseline
    can only have cost more); the high bound ("slower") counts a censored arm seed as its end value and a censored
    baseline seed as +infinity (``high = inf``). Each bound's mean difference is thus pushed towards "no verdict"; the
    spread is the substituted values' (exact only without censoring: ``benchmarks/bench_sequential.py`` measures the
    error of the censored case). With a single seed on a side there is no variance: the interval is ``(0, inf)``.

    Verdict: "faster" (``low > 1``), "slower" (``high < 1``), else "undecided at max" when ``arm.n >= max_seeds``,
    else "futile" when the conditional power (:func:`_conditional_power`, from the estimate with censored values as
    their bounds) is below ``rule.futility``, else "open" (add a seed to the arm; and to the baseline too when
    ``baseline_limits``).
    """
    n_a, n_b = arm.n, baseline.n
    spent = rule.alpha_at(n_a) if alpha is None else alpha
    log_a, log_b = np.log(arm.values), np.log(baseline.values)  # censored seeds as their end values
    speedup = math.exp(float(np.mean(log_b) - np.mean(log_a)))
    at_max = n_a >= rule.max_seeds
    if n_a < 2 or n_b < 2:
        verdict = "undecided at max" if at_max else "open"
        return Look(n_a, n_b, spent, speedup, 0.0, math.inf, verdict, math.nan, baseline_limits=n_b < 2)
    w = _welch(log_a, log_b)
    half = float(special.stdtrit(w.df, 1 - spent / 2)) * w.se  # half-width of the log interval
    # Each bound's censored seeds at the side's worst: an arm seed at +infinity makes the arm's mean log cost
    # infinite (low = 0); a baseline seed at +infinity makes high infinite. Otherwise both use the end values.
    low = 0.0 if arm.censored.any() else math.exp(w.diff - half)
    high = math.inf if baseline.censored.any() else math.exp(w.diff + half)
    power = _conditional_power(w, n_a, n_b, rule)
    if low > 1:
        verdict = "faster"
    elif high < 1:
        verdict = "slower"
    elif at_max:
        verdict = "undecided at max"
    elif rule.futility > 0 and power < rule.futility:
        verdict = "futile"
    else:
        verdict = "open"
    limits = w.var_baseline / n_b >= w.var_arm / n_a
    return Look(n_a, n_b, spent, speedup, low, high, verdict, power, limits)
