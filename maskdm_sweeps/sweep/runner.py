"""The sweep driver: run a planned sweep on Ray Tune, phase 1 training each shared pre-training line once (with the
baselines beside them), phase 2 the trials.

Both phases are Tune experiments under ``<sweep>/tune/`` (:mod:`.tune_phase`); ``resume`` restores them (finished
trials are skipped, unfinished and errored ones continue from their checkpoints). Independently of Tune, a stage run
whose directory holds ``result.json`` is never trained again, and one with checkpoints continues from the newest
readable one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import write_json
from ..lines import unit_key
from ..sweepspec.binding import check_binding
from ..sweepspec.expand import SweepPlan, TrialPlan
from ..sweepspec.identity import affects_pretraining
from ..trainer import Reporter
from .context import SweepContext
from .driver_log import ray_messages_to
from .events import append_event
from .interrupt import InterruptHandler
from .lock import DriverLock
from .milestones import asks_of, plan_lines
from .outcome import SweepOutcome, headline_metrics, headline_tags, settle
from .progress import STATUS_EVERY_SECONDS, sweep_progress
from .ray_setup import check_resources, init_ray
from .records import invocations, record_invocation, save_resolved_spec
from .storage import storage_failures_named
from .trainable import first_phase_trainable, trial_trainable
from .tune_phase import grid, phase_errors, run_phase, scheduler, search_space, searcher


def run_sweep(
    plan: SweepPlan,
    address: str | None = None,
    resume: bool = False,
    track: bool = True,
    reporters: Callable[[TrialPlan, str, Path, int], list[Reporter]] | None = None,
    status_every: float = STATUS_EVERY_SECONDS,
) -> SweepOutcome:
    """Run (or resume) every unfinished stage run of ``plan``; returns what finished and what failed.

    ``track``: record a parent MLflow run for this invocation and a nested child run per stage run.
    ``status_every``: seconds between the status lines printed when standard output is not a terminal.
    ``reporters(trial, stage, stage_dir, rank)``: more reporters for every rank of every stage run, called first in
    the trial's process (picklable: it travels to the trials), e.g. :func:`maskdm_sweeps.testing.crash_once`.

    Raises :class:`~maskdm_sweeps.sweep.lock.SweepLocked` before anything starts when another driver runs the sweep,
    :class:`~maskdm_sweeps.sweepspec.binding.SpecChanged` when its directory holds another spec,
    :class:`~maskdm_sweeps.sweep.rounds.BudgetTooSmall` when ``sweep.budget`` cannot pay for the first round, and
    :class:`~maskdm_sweeps.sweep.failures.SweepStorageError` naming the file that could not be written when the
    disk filled up (the driver's, or a stage's). Ray's and Tune's own messages go to ``<sweep>/driver.log``.
    """
    check_binding(plan)  # before the lock: nothing is written into a directory bound to another spec
    if plan.spec.sweep.rounds is not None:  # a budget smaller than the first round: refused before Ray starts
        from .rounds import RoundsState, check_first_round

        check_first_round(plan, RoundsState.load_or_start(plan))
    with DriverLock(plan.layout), asks_of(plan), storage_failures_named(plan):
        init_ray(address)  # before Ray's messages are sent to driver.log: ray.init clears its logger's handlers
        with ray_messages_to(plan.layout.driver_log):
            outcome = _run_locked(plan, address, resume, track, reporters, status_every)
    return outcome


def _run_locked(
    plan: SweepPlan,
    address: str | None,
    resume: bool,
    track: bool,
    reporters: Callable[[TrialPlan, str, Path, int], list[Reporter]] | None,
    status_every: float = STATUS_EVERY_SECONDS,
) -> SweepOutcome:
    init_ray(address)
    check_resources(plan)
    save_resolved_spec(plan)
    sweep_dir = plan.sweep_dir
    previous = invocations(plan)
    number = len(previous) + 1
    last = previous[-1]["experiments"] if previous and resume else {}
    experiments = {"pretrain": f"pretrain-{number}", "trials": f"trials-{number}"}
    record_invocation(plan, {"number": number, "resume": resume, "address": address, "experiments": experiments})
    append_event(sweep_dir, "invocation", number=number, resume=resume)

    tracking = None
    if track:
        from ..tracking import start_sweep_tracking

        tracking = start_sweep_tracking(plan, number, resume)
    ctx = SweepContext(plan, tracking.reporters if tracking else None, reporters)
    ctx.progress, ctx.status_every = sweep_progress(plan), status_every  # the driver's alone: not shipped
    outcome = SweepOutcome(sweep_dir)
    try:
        with InterruptHandler(plan.layout) as stop:
            if plan.spec.sweep.rounds is not None:  # seeds until decided: rounds of the two phases
                from .adaptive import run_adaptive

                run_adaptive(plan, ctx, outcome, experiments, stop, _run_phases)
            else:
                _run_phases(plan, ctx, outcome, last, experiments, stop)
    except KeyboardInterrupt:  # the second Ctrl-C: stop the trials where they are
        import ray

        outcome.killed = True
        ray.shutdown()
    settle(plan, outcome, number)
    if tracking:
        from ..tracking import finish_sweep_tracking

        artifacts = list(outcome.artifacts.values())
        finish_sweep_tracking(tracking, outcome.status, artifacts, headline_metrics(plan), headline_tags(plan))
    return outcome


def _run_phases(
    plan: SweepPlan,
    ctx: SweepContext,
    outcome: SweepOutcome,
    last: dict,
    experiments: dict,
    stop: InterruptHandler,
    make_stopper: Callable[[], Any] | None = None,
) -> None:
    """Phase 1 (shared pre-trainings, with the baselines beside them) and phase 2 (the trials, watched by the Tune
    stopper ``make_stopper()`` makes once phase 1 is done, or by none); a stop request (the first Ctrl-C) ends after
    the phase that was running."""
    search = plan.spec.sweep.search
    pretrain_inside = any(affects_pretraining(k) for k in search.space)
    if search.method == "grid":
        outcome.reused = [t.trial_id for t in plan.trials if plan.trial_finished(t.trial_id)]

    # one unit per line of a pre-training run to train (the main line, or a branch): see sweep/milestones.py
    pending_pretrains = (
        [job.unit for key, pre in plan.pretrains.items() for job in plan_lines(plan.layout, key, pre.asked)[0]]
        if not pretrain_inside
        else []
    )
    # Trials without a pre-training (the baseline) run beside the pre-trainings, unless a search or a scheduler
    # needs every trial in one Tune run.
    alongside = (
        [t.trial_id for t in plan.trials if not t.pretrain_key and not plan.trial_finished(t.trial_id)]
        if pending_pretrains and search.method == "grid" and plan.spec.sweep.scheduler.type == "none"
        else []
    )
    if pending_pretrains:
        # a grid needs no Tune state to resume: the pending units are listed afresh, each resumes its checkpoint
        results = run_phase(
            experiments["pretrain"], first_phase_trainable, {"unit": grid(pending_pretrains + alongside)}, ctx, None
        )
        outcome.failed.update(phase_errors(results, "unit"))
    if stop.requested:
        outcome.killed = True
        return

    failed_lines = {unit: reason for unit, reason in outcome.failed.items() if unit_key(unit) in plan.pretrains}
    failed_keys = {unit_key(unit): unit for unit in failed_lines}

    def lost(t: TrialPlan) -> bool:  # its pre-training failed before keeping the length it asks for
        return t.pretrain_key in failed_keys and plan.milestone(t.pretrain_key, t.config.pretrain.steps) is None

    runnable = [t for t in plan.trials if not lost(t) and t.trial_id not in outcome.failed]
    for t in plan.trials:
        if lost(t) and t.pretrain_key is not None:
            unit = failed_keys[t.pretrain_key]
            outcome.failed[t.trial_id] = f"its pre-training {unit} failed: {failed_lines[unit]}"
            # its manifest, so that trials.parquet and report.md list it as failed, with the reason
            plan.layout.trial_dir(t.trial_id).mkdir(parents=True, exist_ok=True)
            write_json(plan.layout.manifest(t.trial_id), t.manifest(plan.spec.resources, plan.spec_hash))
    for unit in failed_lines:  # name them as pre-trainings, keeping the reason
        outcome.failed[f"pretrain {unit}"] = outcome.failed.pop(unit)
    if search.method == "grid":
        todo = [t.trial_id for t in runnable if not plan.trial_finished(t.trial_id)]
        space, samples = ({"trial_id": grid(todo)}, 1) if todo else (None, 0)
    else:
        todo = [t.trial_id for t in runnable]
        space = {"trial_id": grid(todo) if search.method == "random" else todo[0], **search_space(plan)}
        samples = search.num_samples
    if space is not None and todo:
        # a search resumes its searcher's state (the trials it proposed); a grid lists the unfinished trials afresh
        resume_path = plan.layout.tune / last["trials"] if "trials" in last and search.method != "grid" else None
        results = run_phase(
            experiments["trials"],
            trial_trainable,
            space,
            ctx,
            resume_path,
            samples,
            searcher(plan),
            scheduler(plan),
            make_stopper() if make_stopper else None,
        )
        outcome.failed.update(phase_errors(results, "trial_id"))
    outcome.killed = stop.requested
