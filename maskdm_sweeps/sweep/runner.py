"""Run a planned sweep on Ray Tune: phase 1 trains each shared pre-training once, phase 2 runs the trials.

Both phases are Tune experiments under ``<sweep>/tune/``; ``resume`` restores them (finished trials are skipped,
unfinished and errored ones continue from their checkpoints). Independently of Tune, a stage run whose directory
holds ``result.json`` is never trained again, and one with checkpoints continues from the newest readable one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..layout import LOCATION_FIELD, NOTICE_EVENT, PLAN_FILE, SPEC_HASH_OF, read_json, spec_content, write_json
from ..sweepspec.binding import check_binding
from ..sweepspec.expand import SweepPlan, TrialPlan
from ..trainer import Reporter
from ..trainer.config import affects_pretraining
from .driver_log import ray_messages_to
from .events import append_event, read_events
from .failures import SweepStorageError, stage_storage_failure, storage_problem
from .interrupt import InterruptHandler
from .lock import DriverLock
from .milestones import asks_of, plan_lines
from .progress import STATUS_EVERY_SECONDS, progress_callbacks, sweep_progress
from .context import SweepContext
from .trainable import first_phase_trainable, trial_trainable

FORWARDED_ENV = ("MASKDM_CACHE", "MASKDM_FID_WEIGHTS")


@dataclass
class SweepOutcome:
    sweep_dir: Path
    finished: list[str] = field(default_factory=list)  # trial ids finished by now (this or an earlier run)
    reused: list[str] = field(default_factory=list)  # trial ids that were already finished before this run
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> reason
    stopped: list[str] = field(default_factory=list)  # trial ids an early-stopping scheduler ended
    artifacts: dict[str, Path] = field(default_factory=dict)  # name -> parquet files, report and plots written after
    interrupted: list[dict] = field(default_factory=list)  # Ctrl-C: the stage runs stopped ({stage, key, step})
    killed: bool = False  # Ctrl-C (once or twice): the sweep stopped before its end
    notices: list[str] = field(default_factory=list)  # what the trial processes noticed in this invocation (lines)

    @property
    def exit_code(self) -> int:
        return 130 if self.killed else 1 if self.failed else 0


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local Ray; a running session is reused."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local runs need no token (docs/design.md, environment)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our live table replaces Ray's own progress output
    # many small reports make frequent experiment snapshots: Tune's snapshot-frequency warning is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": env})


class ClusterTooSmall(ValueError):
    """The spec asks for resources no node of the Ray cluster has: nothing could ever start."""


def check_resources(plan: SweepPlan) -> None:
    import ray

    r, total = plan.spec.resources, ray.cluster_resources()
    if r.gpus > 0 and total.get("GPU", 0) == 0:
        raise ClusterTooSmall(f"resources.gpus is {r.gpus} but the Ray cluster has no GPU; run with --smoke for a "
                              "CPU run, or --set resources.gpus=0")
    if r.trial_gpus > total.get("GPU", 0) or r.trial_cpus > total.get("CPU", 0):
        workers = f" ({r.workers} workers of {r.cpus} CPUs and {r.gpus} GPUs)" if r.workers > 1 else ""
        raise ClusterTooSmall(f"a trial asks for {r.trial_cpus} CPUs and {r.trial_gpus} GPUs{workers}; the cluster "
                              f"has {total.get('CPU', 0)} CPUs and {total.get('GPU', 0)} GPUs")


# A Tune trial whose stage runs on Ray Train workers only drives them: it holds no CPU (Tune needs some resource in
# its request: a token of memory)
DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 2**20}


def trial_resources(plan: SweepPlan) -> dict[str, float]:
    """What one Tune trial process requests: the trial's resources, or a driver's token when workers > 1."""
    r = plan.spec.resources
    return dict(DRIVER_RESOURCES) if r.workers > 1 else {"cpu": r.cpus, "gpu": r.gpus}


def max_concurrent_trials(plan: SweepPlan) -> int | None:
    """``resources.max_concurrent_trials``, or (0) as many trials as the cluster holds at once when workers > 1:
    a Train run starts only with all of its workers, so more drivers would only wait (Ray's advice)."""
    r = plan.spec.resources
    if r.max_concurrent_trials or r.workers == 1:
        return r.max_concurrent_trials or None
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0) // r.trial_cpus] + ([total.get("GPU", 0) // r.trial_gpus] if r.gpus else [])
    return max(1, int(min(fits)))


def save_resolved_spec(plan: SweepPlan) -> Path:
    """The spec as it ran (overrides and --smoke applied), without its location: what ``resume`` reloads where the
    directory is then; ``plan.json`` beside it records its hash (the sweep directory's binding, see
    :mod:`~maskdm_sweeps.sweepspec.binding`)."""
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    data = spec_content(plan.spec.model_dump(mode="json"))
    path = plan.layout.resolved_spec
    path.write_text(f"# resolved spec of sweep {plan.spec.name} (hash {plan.spec_hash}, recorded in {PLAN_FILE})\n"
                    f"# {LOCATION_FIELD}: the folder above this sweep directory, wherever it is\n"
                    + yaml.safe_dump(data, sort_keys=False))
    write_json(plan.layout.plan_file, plan_summary(plan))
    return path


def plan_summary(plan: SweepPlan) -> dict[str, Any]:
    return {
        "sweep": plan.spec.name, "spec_hash": plan.spec_hash, "spec_hash_of": SPEC_HASH_OF,
        "trials": [{"trial_id": t.trial_id, "label": t.label, "assignments": t.assignments,
                    "pretrain_key": t.pretrain_key, "pretrain_steps": t.config.pretrain.steps} for t in plan.trials],
        "pretrains": {k: {"trial_ids": p.trial_ids, "lengths": p.lengths, "reused": plan.pretrain_finished(k)}
                      for k, p in plan.pretrains.items()},
    }


def _invocations(plan: SweepPlan) -> list[dict]:
    return read_json(plan.layout.invocations) or []


def _record_invocation(plan: SweepPlan, record: dict) -> None:
    write_json(plan.layout.invocations, _invocations(plan) + [record])


def _search_space(plan: SweepPlan) -> dict[str, Any]:
    from ray import tune

    make = {
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "int": lambda d: tune.randint(int(d.low), int(d.high) + 1),
        "choice": lambda d: tune.choice(d.values),
    }
    return {key: make[d.type](d) for key, d in plan.spec.sweep.search.space.items()}


def _scheduler(plan: SweepPlan):
    s = plan.spec.sweep.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # ASHA stops any trial that reaches max_t: one past the last step lets the survivors finish (and save) themselves
    max_t = max(t.config.finetune.steps for t in plan.trials) + 1
    return ASHAScheduler(time_attr="step", metric=s.metric, mode=s.mode, max_t=max_t,
                         grace_period=min(s.grace_period, max_t), reduction_factor=s.reduction_factor)


def _searcher(plan: SweepPlan):
    search = plan.spec.sweep.search
    if search.method == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=search.metric, mode=search.mode, sampler=optuna.samplers.TPESampler(seed=search.seed))
    if search.method == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed)
    return None


def _run_phase(name: str, trainable, param_space: dict, ctx: SweepContext, resume_path: Path | None,
               num_samples: int = 1, searcher=None, scheduler=None):
    from ray import tune

    spec = ctx.plan.spec
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), trial_resources(ctx.plan))
    tuner = _restored(resume_path, fn)
    if tuner is None:
        tuner = tune.Tuner(
            fn,
            param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=searcher, scheduler=scheduler,
                                        max_concurrent_trials=max_concurrent_trials(ctx.plan)),
            run_config=tune.RunConfig(
                name=name, storage_path=str(ctx.plan.layout.tune),
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                callbacks=progress_callbacks(ctx, f"{spec.name}: {name}"),
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
        print(f"note: Ray Tune's state at {resume_path} is unreadable ({type(err).__name__}); starting the phase "
              "afresh (finished stage runs are kept)", file=sys.stderr)
        return None


def _collect_errors(result_grid, outcome: SweepOutcome, key: str) -> None:
    for result in result_grid:
        if result.error is not None:
            ident = result.config.get(key, "?")
            outcome.failed[ident] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}"


def run_sweep(plan: SweepPlan, address: str | None = None, resume: bool = False, track: bool = True,
              reporters: Callable[[TrialPlan, str, Path, int], list[Reporter]] | None = None,
              status_every: float = STATUS_EVERY_SECONDS) -> SweepOutcome:
    """Run (or resume) every unfinished stage run of ``plan``; returns what finished and what failed.

    ``track``: record a parent MLflow run for this invocation and a nested child run per stage run.
    ``status_every``: seconds between the status lines printed when standard output is not a terminal.
    ``reporters(trial, stage, stage_dir, rank)``: more reporters for every rank of every stage run, called first in
    the trial's process (picklable: it travels to the trials), e.g. :func:`maskdm_sweeps.testing.crash_once`.

    Raises :class:`~maskdm_sweeps.sweep.lock.SweepLocked` before anything starts when another driver runs the sweep,
    :class:`~maskdm_sweeps.sweepspec.binding.SpecChanged` when its directory holds another spec, and
    :class:`~maskdm_sweeps.sweep.failures.SweepStorageError` naming the file that could not be written when the
    disk filled up (the driver's, or a stage's). Ray's and Tune's own messages go to ``<sweep>/driver.log``.
    """
    check_binding(plan)  # before the lock: nothing is written into a directory bound to another spec
    with DriverLock(plan.layout), asks_of(plan):
        earlier_events = len(read_events(plan.sweep_dir))  # what a full disk is looked for after
        try:
            init_ray(address)  # before Ray's messages are sent to driver.log: ray.init clears its logger's handlers
            with ray_messages_to(plan.layout.driver_log):
                outcome = _run_locked(plan, address, resume, track, reporters, status_every)
        except ClusterTooSmall:
            raise
        except Exception as err:
            problem = storage_problem(err, plan.layout, earlier_events)
            if problem is None:
                raise
            raise SweepStorageError(problem) from err
        problem = stage_storage_failure(plan.sweep_dir, earlier_events)
        if problem is not None:  # a stage found the disk full: the sweep ends as that one error
            raise SweepStorageError(problem)
        return outcome


def _run_locked(plan: SweepPlan, address: str | None, resume: bool, track: bool,
                reporters: Callable[[TrialPlan, str, Path, int], list[Reporter]] | None,
                status_every: float = STATUS_EVERY_SECONDS) -> SweepOutcome:
    init_ray(address)
    check_resources(plan)
    save_resolved_spec(plan)
    sweep_dir = plan.sweep_dir
    previous = _invocations(plan)
    number = len(previous) + 1
    last = previous[-1]["experiments"] if previous and resume else {}
    experiments = {"pretrain": f"pretrain-{number}", "trials": f"trials-{number}"}
    _record_invocation(plan, {"number": number, "resume": resume, "address": address, "experiments": experiments})
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
            _run_phases(plan, ctx, outcome, last, experiments, stop)
    except KeyboardInterrupt:  # the second Ctrl-C: stop the trials where they are
        import ray

        outcome.killed = True
        ray.shutdown()
    started = {e["trial_id"] for e in read_events(sweep_dir) if e["event"] == "stage_start" and e["stage"] == "finetune"}
    if plan.spec.sweep.search.method == "grid":  # a grid's trials are its plan's (an older directory may hold others)
        started &= {t.trial_id for t in plan.trials}
    outcome.finished = sorted(t for t in started | {t.trial_id for t in plan.trials} if plan.trial_finished(t))
    outcome.stopped = sorted(t for t in started if not plan.trial_finished(t) and t not in outcome.failed)
    outcome.interrupted = [e for e in read_events(sweep_dir, since_invocation=number)
                           if e["event"] == "stage_interrupted"]
    outcome.notices = _notices_since(plan, number)
    outcome.artifacts = _write_results(plan)
    if tracking:
        from ..tracking import finish_sweep_tracking

        status = "KILLED" if outcome.killed else "FAILED" if outcome.failed else "FINISHED"
        finish_sweep_tracking(tracking, status, list(outcome.artifacts.values()), _headline_metrics(plan))
    return outcome


def _run_phases(plan: SweepPlan, ctx: SweepContext, outcome: SweepOutcome, last: dict, experiments: dict,
                stop: InterruptHandler) -> None:
    """Phase 1 (shared pre-trainings, with the baselines beside them) and phase 2 (the trials); a stop request
    (the first Ctrl-C) ends after the phase that was running."""
    search = plan.spec.sweep.search
    pretrain_inside = any(affects_pretraining(k) for k in search.space)
    outcome.reused = [t.trial_id for t in plan.trials if plan.trial_finished(t.trial_id)] if search.method == "grid" else []

    # one unit per line of a pre-training run to train (the main line, or a branch): see sweep/milestones.py
    pending_pretrains = [job.unit for key, pre in plan.pretrains.items()
                         for job in plan_lines(plan.layout, key, pre.asked)[0]] if not pretrain_inside else []
    # Trials without a pre-training (the baseline) run beside the pre-trainings, unless a search or a scheduler
    # needs every trial in one Tune run.
    alongside = [t.trial_id for t in plan.trials if not t.pretrain_key and not plan.trial_finished(t.trial_id)] \
        if pending_pretrains and search.method == "grid" and plan.spec.sweep.scheduler.type == "none" else []
    if pending_pretrains:
        # a grid needs no Tune state to resume: the pending units are listed afresh, each resumes its checkpoint
        grid = _run_phase(experiments["pretrain"], first_phase_trainable,
                          {"unit": _grid(pending_pretrains + alongside)}, ctx, None)
        _collect_errors(grid, outcome, "unit")
    if stop.requested:
        outcome.killed = True
        return

    failed_lines = {unit: reason for unit, reason in outcome.failed.items() if unit.split("/")[0] in plan.pretrains}
    failed_keys = {unit.split("/")[0]: unit for unit in failed_lines}

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
        space, samples = ({"trial_id": _grid(todo)}, 1) if todo else (None, 0)
    else:
        todo = [t.trial_id for t in runnable]
        space = {"trial_id": _grid(todo) if search.method == "random" else todo[0], **_search_space(plan)}
        samples = search.num_samples
    if space is not None and todo:
        # a search resumes its searcher's state (the trials it proposed); a grid lists the unfinished trials afresh
        resume_path = plan.layout.tune / last["trials"] if "trials" in last and search.method != "grid" else None
        grid = _run_phase(experiments["trials"], trial_trainable, space, ctx, resume_path, samples,
                          _searcher(plan), _scheduler(plan))
        _collect_errors(grid, outcome, "trial_id")
    outcome.killed = stop.requested


def _notices_since(plan: SweepPlan, invocation: int) -> list[str]:
    """This invocation's notices (each once), as lines naming their stage run."""
    progress = sweep_progress(plan)
    seen: set[tuple] = set()
    for e in read_events(plan.sweep_dir, since_invocation=invocation):
        if e.get("event") == NOTICE_EVENT and (e.get("unit"), e.get("message")) not in seen:
            seen.add((e.get("unit"), e.get("message")))
            progress.notices.append(e)
    return progress.take_notices()


def _write_results(plan: SweepPlan) -> dict[str, Path]:
    """parquet, report and plots of the sweep (the results package): name -> path."""
    from ..results import write_all

    return write_all(plan.sweep_dir)


def _headline_metrics(plan: SweepPlan) -> dict[str, float]:
    """The speed-ups of the sweep's report, for its MLflow parent run."""
    from ..results import headline, headline_metrics, load

    trials, curves = load(plan.sweep_dir)
    return headline_metrics(headline(plan.sweep_dir, trials, curves)[0])


def _grid(values: list[str]):
    from ray import tune

    return tune.grid_search(values)
