"""The sweep directory on disk: every file name, every path, and "is it finished".

One owner for the layout (standard library only, so the trainer may use it too); every other module asks here. How the
files are written and read is :mod:`maskdm_sweeps.files`; what a pre-training line is (its unit name, its branches'
origins, the stretches behind a state) is :mod:`maskdm_sweeps.lines`::

    <output_dir>/                       results root (the spec's output_dir); mlflow.db, mlartifacts/ and train/
                                        are its own entries, never a sweep's name
      _pretrain/<key>/                  a pre-training run (its main line): a stage run that serves every length
                                        asked of it from milestones/, reused and extended by later sweeps
      _pretrain/<key>/branches/<name>/  a line that starts from a kept state of another line (a length asked
                                        for after a longer run had rotated its checkpoint away)
      _pretrain/<key>/asks/             lengths other processes need of the run (step_<n>.<token>): whichever of
                                        its lines trains past one keeps it
      <sweep name>/                     one sweep, bound to one resolved spec (plan.json records its hash)
      <sweep name>.replaced-<UTC time>/ a sweep moved aside by ``run --replace`` (nothing is deleted)
        spec.resolved.yaml  plan.json  invocations.json  events.jsonl  .driver.lock  .stop_requested
        driver.log                      Ray's and Tune's own messages (tracebacks), kept off the terminal
        trials/<trial id>/trial.json    the trial's manifest (what it is, written when it starts)
        trials/<trial id>/finetune/     the trial's fine-tuning: a stage run
        tune/                           Ray Tune's own state (resume)
        trials.parquet  curves.parquet  report.md  plots/*.png
        mlflow_parents/<n>/             the MLflow parent run of invocation n: a run directory (below)
      mlflow.db  .mlflow.lock           the default MLflow store; the lock held while a store, experiment or run
                                        is created
    <stage run>/                        config.json  metrics.jsonl  result.json  checkpoints/  samples/
                                        mlflow_run.json  mlflow_target.json  mlflow_buffer.jsonl  diverged.json
                                        milestones/step_<n>.pt  milestones/step_<n>.json  branch.json  .train.lock
                                        (every state file step_<n>.pt, in checkpoints/ or milestones/, has its
                                        record step_<n>.json beside it, holding its sha256: trainer/checkpoint.py;
                                        one found corrupt is renamed step_<n>.pt.corrupt, its record with it)
    <run directory>                     an MLflow run's: mlflow_run.json (its id)  mlflow_target.json (store, results
                                        root)  mlflow_buffer.jsonl (records not yet sent)  mlflow_files/ (copies of
                                        artifacts waiting to be sent); every stage run is one

A stage run is finished exactly when its ``result.json`` exists (written last, atomically). A pre-training line is
never "finished" for good: it holds the lengths in ``milestones/`` (kept forever, never rotated) and can be extended.

Every path written into these files is relative to the directory of the file that holds it (``result.json``'s
checkpoint, ``branch.json``'s parent, the resolved spec, which has no ``output_dir`` at all): a results root, or a
sweep directory with the ``_pretrain/`` beside it, can be moved or copied and resumed where it is. Older files with
absolute paths are read by the name at their end.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .files import read_json, read_jsonl  # noqa: F401 (read_json: also imported from here by results.collect)

# ------------------------------------------------------------------------------------------------ file names
STORE_DIR = "_pretrain"
TRIALS_DIR = "trials"
TUNE_DIR = "tune"
RESOLVED_SPEC = "spec.resolved.yaml"
PLAN_FILE = "plan.json"
INVOCATIONS_FILE = "invocations.json"
ROUNDS_FILE = "rounds.json"  # an adaptive sweep's rounds: seeds per arm, verdicts, arms stopped as behind
EVENTS_FILE = "events.jsonl"
NOTICE_EVENT = "notice"  # an events.jsonl record of a warning a trial process logged: shown to the user, reported
TRIAL_MANIFEST = "trial.json"
FINETUNE_DIR = "finetune"

STAGE_CONFIG = "config.json"
STAGE_METRICS = "metrics.jsonl"
STAGE_RESULT = "result.json"
STOPPED_BEHIND = "stopped_behind.json"  # a fine-tuning paused because its arm was clearly behind the baseline
CHECKPOINTS_DIR = "checkpoints"
MILESTONES_DIR = "milestones"  # a pre-training's states at the lengths trials asked for: never rotated away
BRANCHES_DIR = "branches"
BRANCH_FILE = "branch.json"  # a branch line: the line and step it started from
TRAIN_LOCK = ".train.lock"  # held (fcntl) by the one process that trains a line
ASKS_DIR = "asks"  # on a run's main line: one file per length a process needs of the run while another trains it
SAMPLES_DIR = "samples"
DIVERGED = "diverged.json"
DRIVER_LOCK = ".driver.lock"  # held (fcntl) by the one run or resume driving the sweep
DRIVER_LOG = "driver.log"  # Ray's and Tune's log records while a driver runs the sweep
STOP_REQUEST = ".stop_requested"  # written on the first Ctrl-C: every stage stops after its next checkpoint
MLFLOW_RUN_FILE = "mlflow_run.json"
MLFLOW_TARGET_FILE = "mlflow_target.json"
MLFLOW_BUFFER_FILE = "mlflow_buffer.jsonl"

MLFLOW_DB = "mlflow.db"  # the default MLflow store, in the results root (SQLite adds mlflow.db-journal beside it)
MLFLOW_ARTIFACTS_DIR = "mlartifacts"  # the default store's artifacts, in the results root
TRAIN_DIR = "train"  # `maskdm-sweep train`'s default outputs, in the default results root
REPLACED_MARK = ".replaced-"  # <sweep name>.replaced-<UTC time>: a sweep moved aside by `run --replace`

# the results root's own entries, beside the sweeps: no sweep may take one of these names
RESULTS_ROOT_ENTRIES = {
    STORE_DIR: "the shared pre-trainings",
    MLFLOW_DB: "the default MLflow store",
    MLFLOW_ARTIFACTS_DIR: "the default MLflow store's artifacts",
    TRAIN_DIR: "the outputs of `maskdm-sweep train`",
}
MLFLOW_FILES_DIR = "mlflow_files"  # copies of a run's artifacts taken when queued, kept until sent
PARENT_RUNS_DIR = "mlflow_parents"  # <sweep>/mlflow_parents/<n>/: the parent run of invocation n
MLFLOW_LOCK = ".mlflow.lock"  # in the results root, held (fcntl) while a store, an experiment or a run is created

TRIALS_PARQUET = "trials.parquet"
CURVES_PARQUET = "curves.parquet"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"

_STEP_NAME = re.compile(r"step_(\d{9,})(.*)")


def step_file(step: int, suffix: str) -> str:
    """The name of the file of ``step`` with ``suffix`` (``.pt``, ``.json``, ``.png``, ``.<token>``):
    ``step_000000040.pt``; nine digits at least, so that the names sort by step."""
    return f"step_{step:09d}{suffix}"


def step_of(path: Path | str, suffix: str | None = None) -> int | None:
    """The step of a file named by :func:`step_file` (with exactly ``suffix``, when given); None for any other
    name (``step_000000040.pt.corrupt`` is not a ``.pt``)."""
    match = _STEP_NAME.fullmatch(Path(path).name)
    if match is None or (suffix is not None and match.group(2) != suffix):
        return None
    return int(match.group(1))


def step_files(directory: Path, suffix: str | None) -> list[Path]:
    """The files of ``directory`` named by :func:`step_file` with ``suffix`` (None: any), by step then name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (p for p in directory.iterdir() if step_of(p, suffix) is not None)
    return sorted(found, key=lambda p: (step_of(p), p.name))


# ------------------------------------------------------------------------------------------------ paths
@dataclass(frozen=True)
class StageRun:
    """The directory of one stage run (a pre-training or a trial's fine-tuning)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / STAGE_CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / STAGE_METRICS

    @property
    def result(self) -> Path:
        return self.path / STAGE_RESULT

    @property
    def diverged(self) -> Path:
        """Written when the stage's loss became NaN or infinite: a retry would diverge again, so none is made."""
        return self.path / DIVERGED

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES_DIR

    @property
    def mlflow_run(self) -> Path:
        return self.path / MLFLOW_RUN_FILE

    @property
    def milestones(self) -> Path:
        return self.path / MILESTONES_DIR

    def milestone(self, step: int) -> Path:
        """The kept state at ``step`` (a copy of a checkpoint, out of the rotation)."""
        return self.milestones / step_file(step, ".pt")

    def milestone_info(self, step: int) -> Path:
        """The kept state's record: what reaching ``step`` cost, ``{step, wall_seconds, train_tflops, eval_tflops,
        loss}``, and the digest of its bytes, ``{sha256, bytes}`` (missing in records from before digests)."""
        return self.milestones / step_file(step, ".json")

    def milestone_steps(self) -> list[int]:
        """The lengths this line keeps (those with a state and its cost record), ascending."""
        steps = (step_of(p) for p in step_files(self.milestones, ".json"))
        return [step for step in steps if step is not None and self.milestone(step).exists()]

    @property
    def branch(self) -> Path:
        return self.path / BRANCH_FILE

    def result_checkpoint(self, result: dict) -> Path:
        """The final checkpoint a ``result.json`` names (relative to this run; an older absolute path is read as the
        file of that name in this run's ``checkpoints/``, where a stage always writes it)."""
        named = Path(result["checkpoint"])
        return self.checkpoints / named.name if named.is_absolute() else self.path / named

    @property
    def train_lock(self) -> Path:
        return self.path / TRAIN_LOCK

    @property
    def asks(self) -> Path:
        """On a run's main line: the lengths processes wait for, which any line of the run keeps as it passes them."""
        return self.path / ASKS_DIR

    def ask(self, step: int, token: str) -> Path:
        """One process's ask for the state at ``step`` (``token`` tells the askers apart; each removes its own)."""
        return self.asks / step_file(step, f".{token}")

    def asked_files(self) -> list[Path]:
        """The asks made of the run now, one file per asking process and length."""
        return step_files(self.asks, None)

    def asked_steps(self) -> set[int]:
        """Every length asked of the run now."""
        return {step for step in map(step_of, self.asked_files()) if step is not None}

    def finished(self) -> bool:
        return self.result.exists()

    @property
    def stopped_behind(self) -> Path:
        """Written when a fine-tuning is paused as clearly behind the baseline (it keeps its checkpoints)."""
        return self.path / STOPPED_BEHIND


@dataclass(frozen=True)
class SweepDir:
    """The paths of one sweep under its results root."""

    root: Path  # the results root: the spec's output_dir
    name: str

    @classmethod
    def of(cls, sweep_path: Path) -> SweepDir:
        """The layout of an existing sweep directory (its results root is the folder above it)."""
        path = Path(sweep_path).resolve()
        return cls(path.parent, path.name)

    @property
    def path(self) -> Path:
        return Path(self.root) / self.name

    @property
    def store(self) -> Path:
        """Shared across the sweeps of one results root: finished pre-trainings are found here and reused."""
        return Path(self.root) / STORE_DIR

    def pretrain(self, key: str) -> StageRun:
        """The directory of pre-training run ``key``: its main line (:mod:`maskdm_sweeps.lines`)."""
        return StageRun(self.store / key)

    def trial_dir(self, trial_id: str) -> Path:
        return self.path / TRIALS_DIR / trial_id

    def manifest(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / TRIAL_MANIFEST

    def finetune(self, trial_id: str) -> StageRun:
        return StageRun(self.trial_dir(trial_id) / FINETUNE_DIR)

    def trial_ids(self) -> list[str]:
        """Every trial that has a directory, sorted."""
        root = self.path / TRIALS_DIR
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    def replaced(self, stamp: str) -> Path:
        """Where ``run --replace`` moves this sweep aside: ``<name>.replaced-<stamp>`` beside it."""
        return Path(self.root) / f"{self.name}{REPLACED_MARK}{stamp}"

    def parent_run(self, invocation: int) -> Path:
        """The run directory of invocation ``invocation``'s MLflow parent run."""
        return self.path / PARENT_RUNS_DIR / f"{invocation:04d}"

    def parent_runs(self) -> list[Path]:
        """The run directories of every invocation's parent run on disk, oldest first."""
        root = self.path / PARENT_RUNS_DIR
        return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    @property
    def driver_lock(self) -> Path:
        return self.path / DRIVER_LOCK

    @property
    def driver_log(self) -> Path:
        """Ray's and Tune's own messages while a driver runs the sweep (tracebacks of failed trials among them)."""
        return self.path / DRIVER_LOG

    @property
    def stop_request(self) -> Path:
        return self.path / STOP_REQUEST

    @property
    def resolved_spec(self) -> Path:
        return self.path / RESOLVED_SPEC

    @property
    def plan_file(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def invocations(self) -> Path:
        return self.path / INVOCATIONS_FILE

    @property
    def rounds(self) -> Path:
        return self.path / ROUNDS_FILE

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def tune(self) -> Path:
        return self.path / TUNE_DIR

    @property
    def trials_parquet(self) -> Path:
        return self.path / TRIALS_PARQUET

    @property
    def curves_parquet(self) -> Path:
        return self.path / CURVES_PARQUET

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR


# ------------------------------------------------------------------------------------------------ names
def reserved_name(name: str) -> str | None:
    """What a would-be sweep name collides with in the results root (case aside: some filesystems ignore it), or
    None when the name is free."""
    folded = name.casefold()
    for entry, what in RESULTS_ROOT_ENTRIES.items():
        if folded == entry.casefold() or (entry == MLFLOW_DB and folded.startswith(entry.casefold())):
            return f"{entry} ({what})"
    if name.startswith("."):
        return "hidden files of the results root"
    if REPLACED_MARK in name:
        return f"<sweep>{REPLACED_MARK}<time> (sweeps moved aside by `run --replace`)"
    return None


class SweepDirError(ValueError):
    """A sweep directory that cannot be used as it is: bad input, the CLI exits 2 naming why."""


def relative_path(path: Path, start: Path) -> str:
    """``path`` relative to the directory ``start``: what a file under ``start`` writes, so that both can move."""
    return os.path.relpath(Path(path), Path(start))


def mlflow_lock(results_root: Path) -> Path:
    """The lock file held while the MLflow store, an experiment or a run of this results root is created."""
    return Path(results_root) / MLFLOW_LOCK


def is_parent_run_dir(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a sweep invocation's parent run (not a stage run)."""
    return Path(run_dir).parent.name == PARENT_RUNS_DIR


def read_notices(sweep_path: Path) -> list[dict]:
    """The notices of a sweep (warnings its trial processes logged), oldest first, each (unit, message) once: a
    retried stage that notices the same thing again adds nothing."""
    seen, out = set(), []
    for e in read_jsonl(Path(sweep_path) / EVENTS_FILE):
        ident = (e.get("unit"), e.get("message"))
        if e.get("event") == NOTICE_EVENT and ident not in seen:
            seen.add(ident)
            out.append(e)
    return out
