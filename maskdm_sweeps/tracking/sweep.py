"""Runs of a sweep: one parent run per ``run``/``resume`` invocation, one nested child run per stage run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..layout import PLAN_FILE, RESOLVED_SPEC, SweepDir, read_json
from .reporter import MlflowReporter
from .store import client, default_tracking_uri, ensure_experiment, git_commit

log = logging.getLogger(__name__)


@dataclass
class SweepTracking:
    """Picklable: shipped to every trial process, where :meth:`reporters` attaches a child run to each stage run."""

    uri: str
    experiment_id: str
    parent_run_id: str | None
    sweep: str
    spec_hash: str
    commit: str
    pretrain_store: str  # <results root>/_pretrain, where a fine-tuning finds the run of its pre-training
    labels: dict[str, str] = field(default_factory=dict)  # trial id -> short label (run names)
    pretrain_labels: dict[str, str] = field(default_factory=dict)  # pre-training key -> its label

    def reporters(self, trial, stage: str, stage_dir: Path) -> list[MlflowReporter]:
        cfg = trial.config
        mask = cfg.mask.model_dump()
        tags = {
            "sweep": self.sweep, "spec_hash": self.spec_hash, "git_commit": self.commit, "trial_id": trial.trial_id,
            "stage": stage, "seed": str(cfg.seed), "arm": trial.label, "pretrain_key": trial.pretrain_key or "",
            "mask_strategy": "none" if trial.is_baseline else mask["strategy"],
            "mask_rate": "0" if trial.is_baseline else str(mask.get("rate", "")),
        }
        store = SweepDir(Path(self.pretrain_store).parent, self.sweep)
        line = None
        if stage == "pretrain":
            # the line's unit: the key, or <key>/<branch> (a branch directory sits under <key>/branches/)
            line = trial.pretrain_key if Path(stage_dir).name == trial.pretrain_key else \
                f"{trial.pretrain_key}/{Path(stage_dir).name}"
            tags["pretrain_line"] = line
        elif trial.pretrain_key:
            tags["pretrain_steps"] = str(cfg.pretrain.steps)
            served = store.milestone_line(trial.pretrain_key, cfg.pretrain.steps)
            pre_run = read_json(served.mlflow_run) if served is not None else None
            if pre_run:
                tags["pretrain_run_id"] = pre_run["run_id"]
        name = self._run_name(trial, stage, line)
        return [MlflowReporter(self.uri, self.experiment_id, stage_dir, name, self.parent_run_id, tags,
                               cfg.model_dump(mode="json"))]


    def _run_name(self, trial, stage: str, line: str | None) -> str:
        """What the runs table shows: the trial's short label (``patch r=0.5 · ema · s0``) or the pre-training's
        (``pretrain patch r=0.9 · s0``, a branch line with where it starts); the hashes are in the tags."""
        if stage == "finetune":
            return self.labels.get(trial.trial_id) or trial.short_label
        name = self.pretrain_labels.get(trial.pretrain_key) or f"pretrain {trial.pretrain_key}"
        branch = line.split("/", 1)[1] if line and "/" in line else ""
        return f"{name} · branch {branch}" if branch else name


def start_sweep_tracking(plan, invocation: int, resume: bool) -> SweepTracking:
    """Create (or find) the experiment and open this invocation's parent run with the spec and plan attached."""
    spec = plan.spec
    uri = spec.tracking.mlflow_uri or default_tracking_uri(spec.output_dir)
    name = spec.tracking.experiment or spec.name
    commit = git_commit()
    parent, exp = None, "0"
    try:
        exp = ensure_experiment(uri, name, spec.output_dir)
        c = client(uri)
        _close_abandoned_parents(c, exp, spec.name)
        run = c.create_run(exp, run_name=f"{spec.name} #{invocation}{' (resume)' if resume else ''}",
                           tags={"sweep": spec.name, "spec_hash": plan.spec_hash, "git_commit": commit,
                                 "invocation": str(invocation), "kind": "sweep"})
        parent = run.info.run_id
        for file in (RESOLVED_SPEC, PLAN_FILE):
            if (plan.sweep_dir / file).exists():
                c.log_artifact(parent, str(plan.sweep_dir / file))
    except Exception as err:  # training must not wait for a tracking server
        log.warning("MLflow is unreachable at %s (%s): runs are buffered and replayed later", uri, err)
    return SweepTracking(uri, exp, parent, spec.name, plan.spec_hash, commit, str(plan.store_dir),
                         plan.short_labels(), {key: plan.pretrain_label(key) for key in plan.pretrains})


def _close_abandoned_parents(c, experiment_id: str, sweep: str) -> None:
    """Parent runs of this sweep still RUNNING were left by a driver that was killed (this driver holds the sweep's
    lock, so no other one is alive): mark them KILLED."""
    runs = c.search_runs([experiment_id], filter_string=f"tags.kind = 'sweep' and tags.sweep = '{sweep}' and "
                         "attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        c.set_terminated(run.info.run_id, status="KILLED")


def finish_sweep_tracking(tracking: SweepTracking, status: str, artifacts: list[Path] = (),
                          metrics: dict[str, float] | None = None) -> None:
    """Attach the results files and the sweep's answer (``metrics``, e.g. ``speedup/<arm>``) to the parent run and
    close it with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    if tracking.parent_run_id is None:
        return
    try:
        c = client(tracking.uri)
        for key, value in (metrics or {}).items():
            c.log_metric(tracking.parent_run_id, key, value)
        for path in artifacts:
            c.log_artifact(tracking.parent_run_id, str(path), artifact_path="plots" if path.suffix == ".png" else None)
        c.set_terminated(tracking.parent_run_id, status=status)
    except Exception as err:
        log.warning("could not close the MLflow parent run (%s)", err)
