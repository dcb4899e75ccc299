"""Runs of a sweep: one parent run per ``run``/``resume`` invocation, one nested child run per stage run.

The parent run is buffered like a stage run, in ``<sweep>/mlflow_parents/<n>/`` (:mod:`.buffer`): when MLflow is
away at the start, the spec, the plan, the results files, the speed-ups and the end status wait there, and
``maskdm-sweep sync`` makes the experiment and the parent before the stage runs that nest under it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_json, read_jsonl
from ..layout import PLAN_FILE, RESOLVED_SPEC, SweepDir
from ..lines import MAIN, keeping_line, line_at, unit_line
from .buffer import RunBuffer, create_record
from .reporter import MlflowReporter
from .store import client, default_tracking_uri, git_commit

log = logging.getLogger(__name__)


@dataclass
class SweepTracking:
    """Picklable: shipped to every trial process, where :meth:`reporters` attaches a child run to each stage run."""

    uri: str
    results_root: str
    experiment: str  # by name: made when first sent, if MLflow is away now
    parent_dir: str  # the parent run's directory (its id is read there when a child run is made)
    parent_run_id: str | None  # None while MLflow has not got the parent run
    sweep: str
    spec_hash: str
    commit: str
    pretrain_store: str  # <results root>/_pretrain, where a fine-tuning finds the run of its pre-training
    labels: dict[str, str] = field(default_factory=dict)  # trial id -> short label (run names)
    pretrain_labels: dict[str, str] = field(default_factory=dict)  # pre-training key -> its label

    def reporters(self, trial, stage: str, stage_dir: Path) -> list[MlflowReporter]:
        cfg = trial.config
        mask = cfg.mask.model_dump()
        # `arm` and `label` mean what they mean in trials.parquet: the arm (``patch r=0.5``) and the trial's label
        # (its axis values); a pre-training serves several trials, so it has an arm but no trial label
        tags = {
            "sweep": self.sweep,
            "spec_hash": self.spec_hash,
            "git_commit": self.commit,
            "trial_id": trial.trial_id,
            "stage": stage,
            "seed": str(cfg.seed),
            "arm": trial.arm,
            "pretrain_key": trial.pretrain_key or "",
            "mask_strategy": "none" if trial.is_baseline else mask["strategy"],
            "mask_rate": "0" if trial.is_baseline else str(mask.get("rate", "")),
            **({"label": trial.label} if stage == "finetune" else {}),
        }
        store = SweepDir(Path(self.pretrain_store).parent, self.sweep)
        line = None
        if stage == "pretrain":
            line = line_at(stage_dir, trial.pretrain_key).unit  # the key, or <key>/<branch>
            tags["pretrain_line"] = line
        elif trial.pretrain_key:
            tags["pretrain_steps"] = str(cfg.pretrain.steps)
            served = keeping_line(store, trial.pretrain_key, cfg.pretrain.steps)
            pre_run = read_json(served.mlflow_run) if served is not None else None
            if pre_run:
                tags["pretrain_run_id"] = pre_run["run_id"]
        name = self._run_name(trial, stage, line)
        return [
            MlflowReporter(
                self.uri,
                Path(self.results_root),
                self.experiment,
                stage_dir,
                name,
                Path(self.parent_dir),
                tags,
                cfg.model_dump(mode="json"),
            )
        ]

    def _run_name(self, trial, stage: str, line: str | None) -> str:
        """What the runs table shows: the trial's short label (``patch r=0.5 · ema · s0``) or the pre-training's
        (``pretrain patch r=0.9 · s0``, a branch line with where it starts); the hashes are in the tags."""
        if stage == "finetune":
            return self.labels.get(trial.trial_id) or trial.short_label
        name = self.pretrain_labels.get(trial.pretrain_key) or f"pretrain {trial.pretrain_key}"
        branch = unit_line(line) if line and unit_line(line) != MAIN else ""
        return f"{name} · branch {branch}" if branch else name


def start_sweep_tracking(plan, invocation: int, resume: bool) -> SweepTracking:
    """Open this invocation's parent run with the spec and plan attached (and the experiment, once), or buffer it
    when MLflow is away; parent runs of earlier invocations left running are closed as KILLED."""
    spec = plan.spec
    uri = spec.tracking.mlflow_uri or default_tracking_uri(spec.output_dir)
    name = spec.tracking.experiment or spec.name
    root = Path(spec.output_dir).resolve()
    commit = git_commit()
    _close_abandoned_parents(plan.layout, invocation, uri, name, root)
    parent = RunBuffer(plan.layout.parent_run(invocation), uri, root)
    parent.enqueue(
        create_record(
            name,
            f"{spec.name} #{invocation}{' (resume)' if resume else ''}",
            {
                "sweep": spec.name,
                "spec_hash": plan.spec_hash,
                "git_commit": commit,
                "invocation": str(invocation),
                "kind": "sweep",
            },
            {},
        )
    )
    for file in (RESOLVED_SPEC, PLAN_FILE):
        if (plan.sweep_dir / file).exists():
            parent.enqueue_artifact(plan.sweep_dir / file, copy=True)
    if parent.flush():  # training must not wait for a tracking server
        log.warning(
            "MLflow is unreachable at %s: the sweep's runs are buffered; `maskdm-sweep sync %s` sends them", uri, root
        )
    return SweepTracking(
        uri,
        str(root),
        name,
        str(parent.dir),
        parent.run_id,
        spec.name,
        plan.spec_hash,
        commit,
        str(plan.store_dir),
        plan.short_labels(),
        {key: plan.pretrain_label(key) for key in plan.pretrains},
    )


def _close_abandoned_parents(layout: SweepDir, invocation: int, uri: str, experiment: str, root: Path) -> None:
    """Parent runs of earlier invocations still open were left by a driver that was killed (this driver holds the
    sweep's lock, so no other one is alive): they are closed as KILLED, buffered or in MLflow."""
    _end_buffered_parents(layout, invocation)
    try:
        _kill_running_parents(client(uri, root), experiment, layout.name)
    except Exception:  # MLflow away: this invocation's own parent run says so when it is buffered
        pass


def _end_buffered_parents(layout: SweepDir, invocation: int) -> None:
    """Give an earlier invocation's buffered parent run the end its killed driver never wrote, and send what it
    holds if MLflow takes it now."""
    for run_dir in layout.parent_runs():
        earlier = RunBuffer.existing(run_dir)
        if run_dir == layout.parent_run(invocation) or earlier is None:
            continue
        records = read_jsonl(earlier.buffer)
        if not records:
            continue
        if not any(r["op"] == "end" for r in records):
            earlier.enqueue({"op": "end", "status": "KILLED"})
        earlier.flush()


def _kill_running_parents(c, experiment: str, sweep: str) -> None:
    """Mark KILLED this sweep's parent runs that MLflow still has RUNNING."""
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return
    runs = c.search_runs(
        [found.experiment_id],
        filter_string=f"tags.kind = 'sweep' and tags.sweep = '{sweep}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in runs:
        c.set_terminated(run.info.run_id, status="KILLED")


def finish_sweep_tracking(
    tracking: SweepTracking,
    status: str,
    artifacts: Iterable[Path] = (),
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Attach the results files and the sweep's answer (``metrics``, e.g. ``speedup/<arm>``; ``tags``, e.g. an
    adaptive sweep's ``verdict/<arm>``) to the parent run and close it with ``status`` (``FINISHED``, ``FAILED`` or
    ``KILLED``); buffered when MLflow is away."""
    parent = RunBuffer(Path(tracking.parent_dir))
    if metrics:
        parent.enqueue_metrics(0, metrics)
    if tags:
        parent.enqueue({"op": "tags", "values": tags})
    for path in artifacts:
        # copied now: a later invocation rewrites report.md and the tables before a `sync` would send them
        parent.enqueue_artifact(Path(path), "plots" if Path(path).suffix == ".png" else None, copy=True)
    parent.enqueue({"op": "end", "status": status})
    if parent.flush():
        log.warning(
            "MLflow is unreachable at %s: the parent run's results stay buffered in %s; "
            "`maskdm-sweep sync %s` sends them",
            tracking.uri,
            parent.dir,
            tracking.results_root,
        )
