"""The Tune adapter: one phase of a sweep as one Ray Tune experiment (fresh or restored), with the spec's searcher
and scheduler, and the errors of its trials read back from Tune's result grid."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..sweepspec.expand import SweepPlan
from .context import SweepContext
from .progress import progress_callbacks
from .ray_setup import max_concurrent_trials, trial_resources


def search_space(plan: SweepPlan) -> dict[str, Any]:
    """The spec's search space as Tune distributions."""
    from ray import tune

    make = {
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "int": lambda d: tune.randint(int(d.low), int(d.high) + 1),
        "choice": lambda d: tune.choice(d.values),
    }
    return {key: make[d.type](d) for key, d in plan.spec.sweep.search.space.items()}


def scheduler(plan: SweepPlan):
    """The spec's early-stopping scheduler (ASHA on the training step), or None."""
    s = plan.spec.sweep.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # ASHA stops any trial that reaches max_t: one past the last step lets the survivors finish (and save) themselves
    max_t = max(t.config.finetune.steps for t in plan.trials) + 1
    return ASHAScheduler(
        time_attr="step",
        metric=s.metric,
        mode=s.mode,
        max_t=max_t,
        grace_period=min(s.grace_period, max_t),
        reduction_factor=s.reduction_factor,
    )


def searcher(plan: SweepPlan):
    """The spec's searcher (Optuna's TPE, or random sampling, seeded), or None for a grid."""
    search = plan.spec.sweep.search
    if search.method == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(
            metric=search.metric, mode=search.mode, sampler=optuna.samplers.TPESampler(seed=search.seed)
        )
    if search.method == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed)
    return None


def grid(values: list[str]):
    """A Tune grid over ``values``: one trial each."""
    from ray import tune

    return tune.grid_search(values)


def run_phase(
    name: str,
    trainable,
    param_space: dict,
    ctx: SweepContext,
    resume_path: Path | None,
    num_samples: int = 1,
    search=None,
    schedule=None,
    stopper=None,
):
    """Run one phase as the Tune experiment ``name`` under the sweep's ``tune/`` (restored from ``resume_path`` when
    it can be), its trials watched by ``stopper`` (a Tune stopper, e.g. ``behind.BehindStopper``); returns Tune's
    result grid."""
    from ray import tune

    spec = ctx.plan.spec
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), trial_resources(ctx.plan))
    tuner = _restored(resume_path, fn)
    if tuner is None:
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=num_samples,
                search_alg=search,
                scheduler=schedule,
                max_concurrent_trials=max_concurrent_trials(ctx.plan),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(ctx.plan.layout.tune),
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                callbacks=progress_callbacks(ctx, f"{spec.name}: {name}"),
                stop=stopper,
                verbose=0,
            ),
        )
    return tuner.fit()


def _restored(resume_path: Path | None, fn):
    """The Tune run at ``resume_path`` restored, or None to start a fresh one: also when its state cannot be read
    (written while the disk was full, say); our stage runs resume from their own checkpoints either way."""
    from ray import tune

    if resume_path is None or not tune.Tuner.can_restore(str(resume_path)):
        return None
    try:
        return tune.Tuner.restore(str(resume_path), fn, resume_unfinished=True, resume_errored=True)
    except Exception as err:  # a half-written experiment state: lose the searcher's memory, not the sweep
        print(
            f"note: Ray Tune's state at {resume_path} is unreadable ({type(err).__name__}); starting the phase "
            "afresh (finished stage runs are kept)",
            file=sys.stderr,
        )
        return None


def phase_errors(result_grid, key: str) -> dict[str, str]:
    """The trials of a phase that ended in an error: their parameter ``key`` (a unit, a trial id) -> the reason,
    one line. (``tuner.fit()`` returns normally when trials failed.)"""
    failed = {}
    for result in result_grid:
        if result.error is not None:
            ident = result.config.get(key, "?")
            failed[ident] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}"
    return failed
