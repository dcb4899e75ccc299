"""The Ray Tune side of a trial: a function trainable that runs stage runs through the shared trainer.

Only ``ray.tune.*`` is used inside (``ray.train.report`` fails a plain Tune trial). Nothing is checkpointed
through Tune: a retried or resumed trial starts its function again, and each stage run resumes from the newest
checkpoint in its own directory. (Tune checkpoints only added a way to fail: a restore from one that Tune had already
rotated away errored the trial on resume.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container, Iterable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..files import read_json, write_json
from ..layout import StageRun
from ..lines import Line, keeping_line, line_named, main_line, unit_key
from ..sweepspec.expand import TrialPlan
from ..sweepspec.identity import with_pretrain_steps
from ..trainer import TrainingDiverged, load_latest_checkpoint
from ..trainer.checkpoint import (
    SET_ASIDE_SUFFIX,
    UnusableState,
    checkpoint_path,
    keep_state,
    recorded_sha256,
    set_aside,
    verify_state,
)
from .context import SweepContext
from .events import append_event
from .failures import NotRetried, earlier_final_failure, final_fields
from .interrupt import StageInterrupted
from .lock import LineLock
from .milestones import Asking, KeptLengths, LineJob, plan_lines
from .notices import capture_notices
from .stage import limit_threads, train_stage
from .workers import StageJob, run_stage_on_workers

log = logging.getLogger(__name__)


def run_stage(
    ctx: SweepContext,
    trial: TrialPlan,
    stage: str,
    stage_dir: Path,
    init: Path | None,
    key: str,
    milestones: tuple[int, ...] = (),
) -> Path:
    """Run (or resume, or skip when finished) one stage run; returns its final checkpoint.

    One worker trains in this process; several (``resources.workers > 1``) in a Ray Train group (see ``workers``).
    A failure no retry can fix (unusable data, a full disk, a diverged loss) is marked ``final`` in its
    ``stage_error`` event; Tune's retry then raises :class:`~maskdm_sweeps.sweep.failures.NotRetried` here before
    starting (see ``failures``).
    A pre-training line whose ``result.json`` is of a shorter length than ``trial``'s, or that lacks one of
    ``milestones`` (one found corrupt and set aside), resumes from its newest checkpoint, keeping ``milestones`` on
    the way, and every length other processes ask of its run meanwhile
    (:class:`~maskdm_sweeps.sweep.milestones.KeptLengths`).
    """
    run = StageRun(stage_dir)
    done = read_json(run.result) if run.finished() else None
    if done is not None and (
        stage == "finetune"
        or (done["steps"] >= trial.config.pretrain.steps and set(milestones) <= set(run.milestone_steps()))
    ):
        return run.result_checkpoint(done)
    if run.diverged.exists():  # training is deterministic: a retry would diverge at the same step
        raise TrainingDiverged((read_json(run.diverged) or {}).get("error", "the loss diverged"))
    sweep_dir = ctx.plan.sweep_dir
    earlier = earlier_final_failure(sweep_dir, stage, key)
    if earlier is not None:  # Tune's retry of a stage that met unusable data or a full disk: it would again
        raise NotRetried(
            f"{earlier.get('error')} (not retried: it failed so earlier in this run, and a retry cannot fix that)"
        )
    resumed = load_latest_checkpoint(run.checkpoints)
    append_event(
        sweep_dir,
        "stage_start",
        stage=stage,
        trial_id=trial.trial_id,
        key=key,
        from_step=resumed[0]["step"] if resumed else 0,
        pid=os.getpid(),
        to_step=getattr(trial.config, stage).steps,
        **({"milestones": list(milestones)} if milestones else {}),
    )
    keeps: Container[int] = milestones
    if stage == "pretrain" and trial.pretrain_key is not None:
        keeps = KeptLengths(main_line(ctx.plan.layout, trial.pretrain_key), milestones)
    try:
        if ctx.plan.spec.resources.workers > 1:  # every rank must save at the same steps: the asks known now, fixed
            fixed = tuple(sorted(keeps.now())) if isinstance(keeps, KeptLengths) else milestones
            run_stage_on_workers(StageJob(ctx, trial, stage, stage_dir, init, key, fixed))
            result = read_json(run.result)  # written by rank 0
        else:
            result = train_stage(ctx, trial, stage, stage_dir, init, milestones=keeps, key=key).to_json()
    except StageInterrupted as stop:
        append_event(sweep_dir, "stage_interrupted", stage=stage, trial_id=trial.trial_id, key=key, step=stop.step)
        raise
    except Exception as err:
        if isinstance(err, TrainingDiverged):
            write_json(run.diverged, {"error": str(err)})
        with suppress(OSError):  # on a full disk the event may not fit either: the stage's own error is raised
            append_event(
                sweep_dir,
                "stage_error",
                stage=stage,
                trial_id=trial.trial_id,
                key=key,
                error=f"{type(err).__name__}: {err}"[:500],
                **final_fields(err, stage_dir),
            )
        raise
    _stage_done(ctx, trial, stage, key, result)
    return run.result_checkpoint(result)


def _stage_done(ctx: SweepContext, trial: TrialPlan, stage: str, key: str, result: dict) -> None:
    import ray

    append_event(
        ctx.plan.sweep_dir,
        "stage_done",
        stage=stage,
        trial_id=trial.trial_id,
        key=key,
        steps=result["steps"],
        fid=result["fid"],
        node_id=ray.get_runtime_context().get_node_id(),
        stopped_early=result["stopped_early"],
        workers=result.get("workers", 1),
    )


def first_phase_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """Phase 1: one line of a pre-training run (``unit``: its key, or ``<key>/<branch>``, see
    :class:`~maskdm_sweeps.sweep.milestones.LineJob`) or, side by side with them, a trial that needs none (``unit``:
    its trial id; the baseline), so that no worker idles while the pre-trainings run."""
    unit = params["unit"]
    key = unit_key(unit)
    if key in ctx.plan.pretrains:
        limit_threads(ctx)
        with capture_notices(ctx.plan.sweep_dir, unit), _stops_quietly():
            pre = ctx.plan.pretrains[key]
            jobs, _ = plan_lines(ctx.plan.layout, key, pre.asked)
            wanted = next((job.milestones for job in jobs if job.unit == unit), [])
            first = ctx.trials[pre.trial_ids[0]]
            for length in wanted:
                serve_pretraining(ctx, replace(first, config=with_pretrain_steps(first.config, length)), pre.asked)
    else:
        trial_trainable({"trial_id": unit}, ctx)


def serve_pretraining(ctx: SweepContext, trial: TrialPlan, asked: Iterable[int] = ()) -> Path:
    """The kept state of ``trial``'s pre-training at its length: found, or trained now (the line that serves it, with
    every other length of ``asked`` it passes), or waited for while another process trains that line.

    Each line is trained under its lock, and re-planned once the lock is held: what the wait found on disk changes
    what is left to train. A kept state (the one served, or the one a branch starts from) is first checked against
    its digest; a corrupt one is set aside, so the plan trains that length again. Returns the milestone's checkpoint.
    """
    layout, key, length = ctx.plan.layout, trial.pretrain_key, trial.config.pretrain.steps
    assert key is not None, f"{trial.trial_id} has no pre-training to serve"
    lengths = sorted(set(asked) | {length})
    # asked first: a process training the line now keeps this length on its way, so the wait below ends served
    with Asking(layout, key, [length]):
        while not _intact(keeping_line(layout, key, length), length):
            job = _job_serving(layout, key, length, lengths)
            if job is None:
                continue  # kept meanwhile (checked above)
            if job.branch_from is not None and not _intact(
                line_named(layout, key, job.branch_from[0]), job.branch_from[1]
            ):
                continue  # the state it would start from was corrupt: set aside, plan again
            with LineLock(StageRun(job.path)):  # blocks while another process trains this line
                again = _job_serving(layout, key, length, lengths)
                if again is None or again.unit != job.unit:
                    continue  # served meanwhile, or better served by another line now
                if again.branch_from is not None:
                    start_branch(layout, again)
                line_trial = replace(trial, config=with_pretrain_steps(trial.config, again.target))
                run_stage(ctx, line_trial, "pretrain", again.path, None, again.unit, tuple(again.milestones))
                if keeping_line(layout, key, length) is None:
                    raise RuntimeError(f"pre-training {again.unit} ended without keeping step {length}")
    line = keeping_line(layout, key, length)
    assert line is not None  # the loop above ends once it is kept, intact
    return line.milestone(length)


def _intact(line: Line | None, step: int) -> bool:
    """Whether ``line`` keeps a state at ``step`` whose bytes are those written (its digest). A corrupt one is set
    aside (``*.corrupt``) with a warning, under the line's lock and checked again there (another process may have
    replaced it meanwhile), so that the planner no longer counts it."""
    if line is None:
        return False
    path = line.milestone(step)
    try:
        verify_state(path)
        return True
    except UnusableState as bad:
        if not bad.bad_bytes and path.exists():
            raise  # an I/O error: training the length again would not cure it
    with LineLock(line):
        try:
            verify_state(path)
            return True
        except UnusableState as bad:
            if bad.bad_bytes:
                set_aside(path)
                log.warning(
                    "pre-training milestone %s is unusable: %s; set aside as %s%s, step %d is trained again",
                    path,
                    bad.problem,
                    path.name,
                    SET_ASIDE_SUFFIX,
                    step,
                )
            return False


def _job_serving(layout, key: str, length: int, asked: list[int]) -> LineJob | None:
    """The job that trains ``length`` now; None once a line keeps it (another process may have trained it meanwhile).

    A kept length has no job, and looking one up would raise ``StopIteration``: escaping a Tune function trainable,
    that ends its thread as if the function had returned but without the final report Tune waits for, and Tune fails
    the trial with "Should not have reached here" (what a unit that waited for another sweep's line did).
    """
    jobs, serving = plan_lines(layout, key, asked)
    if serving[length].how == "kept":
        return None
    return next(job for job in jobs if job.unit == serving[length].unit)


def start_branch(layout, job: LineJob) -> None:
    """Seed a new branch line with a copy of the milestone it starts from (its first checkpoint: training resumes
    there), checked against the milestone's digest as it is copied."""
    assert job.branch_from is not None, f"{job.unit} is not a branch"
    parent_name, step = job.branch_from
    parent, branch = line_named(layout, job.key, parent_name), line_named(layout, job.key, job.line)
    keep_state(parent.milestone(step), checkpoint_path(branch.checkpoints, step))
    branch.start_from(parent, step)


class _stops_quietly:
    """A stage stopped on request ends its Tune trial normally: no error, so no retry (``resume`` continues it).

    A ``StopIteration`` is turned into an error: Ray's runner thread takes it for a normal end and drops the trial's
    last report, so Tune would fail the trial with "Should not have reached here" instead of the real traceback. (A
    class, not ``@contextmanager``: contextlib gives back the ``StopIteration`` that a ``RuntimeError`` wraps.)
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if kind is not None and issubclass(kind, StopIteration):
            raise RuntimeError(f"StopIteration escaped the trial's function: {err!r}") from err
        return kind is not None and issubclass(kind, StageInterrupted)


def trial_trainable(params: dict[str, Any], ctx: SweepContext) -> None:
    """Phase 2: a trial's fine-tuning, from its (usually already finished) pre-training."""
    limit_threads(ctx)
    plan = ctx.plan
    trial = ctx.trial_for(params)
    layout = plan.layout
    layout.trial_dir(trial.trial_id).mkdir(parents=True, exist_ok=True)
    manifest = trial.manifest(plan.spec.resources, plan.spec_hash)
    write_json(layout.manifest(trial.trial_id), manifest)  # what results/ reads
    with capture_notices(plan.sweep_dir, trial.trial_id), _stops_quietly():
        init = None
        if trial.pretrain_key:  # its milestone: there already after phase 1, else trained (or waited for) here
            shared = plan.pretrains.get(trial.pretrain_key)
            init = serve_pretraining(ctx, trial, shared.asked if shared else ())
            # the state it starts from, by the digest of its bytes (the fine-tuning checks the file against it)
            write_json(
                layout.manifest(trial.trial_id),
                {**manifest, "pretrain_checkpoint": str(init), "pretrain_sha256": recorded_sha256(init)},
            )
        run_stage(ctx, trial, "finetune", layout.finetune(trial.trial_id).path, init, trial.trial_id)
