"""The sweep directory on disk: every file name, every path, "is it finished", and how the files are written and read.

One owner for the layout (standard library only, so the trainer may use it too); every other module asks here::

    <output_dir>/                       results root (the spec's output_dir)
      _pretrain/<key>/                  a pre-training run (its main line): a stage run that serves every length
                                        asked of it from milestones/, reused and extended by later sweeps
      _pretrain/<key>/branches/<name>/  a line that starts from a kept state of another line (a length asked
                                        for after a longer run had rotated its checkpoint away)
      _pretrain/<key>/asks/             lengths other processes need of the run (step_<n>.<token>): whichever of
                                        its lines trains past one keeps it
      <sweep name>/                     one sweep
        spec.resolved.yaml  plan.json  invocations.json  events.jsonl  .driver.lock  .stop_requested
        trials/<trial id>/trial.json    the trial's manifest (what it is, written when it starts)
        trials/<trial id>/finetune/     the trial's fine-tuning: a stage run
        tune/                           Ray Tune's own state (resume)
        trials.parquet  curves.parquet  report.md  plots/*.png
    <stage run>/                        config.json  metrics.jsonl  result.json  checkpoints/  samples/
                                        mlflow_run.json  mlflow_target.json  mlflow_buffer.jsonl  diverged.json
                                        milestones/step_<n>.pt  milestones/step_<n>.json  branch.json  .train.lock

A stage run is finished exactly when its ``result.json`` exists (written last, atomically). A pre-training line is
never "finished" for good: it holds the lengths in ``milestones/`` (kept forever, never rotated) and can be extended.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------------ file names
STORE_DIR = "_pretrain"
TRIALS_DIR = "trials"
TUNE_DIR = "tune"
RESOLVED_SPEC = "spec.resolved.yaml"
PLAN_FILE = "plan.json"
INVOCATIONS_FILE = "invocations.json"
EVENTS_FILE = "events.jsonl"
TRIAL_MANIFEST = "trial.json"
FINETUNE_DIR = "finetune"

STAGE_CONFIG = "config.json"
STAGE_METRICS = "metrics.jsonl"
STAGE_RESULT = "result.json"
CHECKPOINTS_DIR = "checkpoints"
MILESTONES_DIR = "milestones"  # a pre-training's states at the lengths trials asked for: never rotated away
BRANCHES_DIR = "branches"
BRANCH_FILE = "branch.json"  # a branch line: the line and step it started from
TRAIN_LOCK = ".train.lock"  # held (fcntl) by the one process that trains a line
ASKS_DIR = "asks"  # on a run's main line: one file per length a process needs of the run while another trains it
SAMPLES_DIR = "samples"
DIVERGED = "diverged.json"
DRIVER_LOCK = ".driver.lock"  # held (fcntl) by the one run or resume driving the sweep
STOP_REQUEST = ".stop_requested"  # written on the first Ctrl-C: every stage stops after its next checkpoint
MLFLOW_RUN_FILE = "mlflow_run.json"
MLFLOW_TARGET_FILE = "mlflow_target.json"
MLFLOW_BUFFER_FILE = "mlflow_buffer.jsonl"

MLFLOW_DB = "mlflow.db"  # the default MLflow store, in the results root

TRIALS_PARQUET = "trials.parquet"
CURVES_PARQUET = "curves.parquet"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


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
        """The kept state at ``step`` (a checkpoint, hard-linked out of the rotation)."""
        return self.milestones / f"step_{step:09d}.pt"

    def milestone_info(self, step: int) -> Path:
        """What reaching ``step`` cost: ``{step, wall_seconds, train_tflops, eval_tflops, loss}``."""
        return self.milestones / f"step_{step:09d}.json"

    def milestone_steps(self) -> list[int]:
        """The lengths this line keeps (those with a state and its cost record), ascending."""
        if not self.milestones.is_dir():
            return []
        steps = []
        for p in self.milestones.glob("step_*.json"):
            step = int(p.stem.split("_")[1])
            if self.milestone(step).exists():
                steps.append(step)
        return sorted(steps)

    @property
    def branch(self) -> Path:
        return self.path / BRANCH_FILE

    def origin(self) -> tuple["StageRun", int] | None:
        """For a branch line: the line it started from and the step (a milestone of that line); None otherwise."""
        record = read_json(self.branch)
        return (StageRun(Path(record["parent"])), int(record["from_step"])) if isinstance(record, dict) else None

    @property
    def train_lock(self) -> Path:
        return self.path / TRAIN_LOCK

    @property
    def asks(self) -> Path:
        """On a run's main line: the lengths processes wait for, which any line of the run keeps as it passes them."""
        return self.path / ASKS_DIR

    def ask(self, step: int, token: str) -> Path:
        """One process's ask for the state at ``step`` (``token`` tells the askers apart; each removes its own)."""
        return self.asks / f"step_{step:09d}.{token}"

    def asked_files(self) -> list[Path]:
        """The asks made of the run now, one file per asking process and length."""
        return sorted(self.asks.glob("step_*.*")) if self.asks.is_dir() else []

    def asked_steps(self) -> set[int]:
        """Every length asked of the run now."""
        return {int(p.name.split(".")[0].split("_")[1]) for p in self.asked_files()}

    def finished(self) -> bool:
        return self.result.exists()


@dataclass(frozen=True)
class SweepDir:
    """The paths of one sweep under its results root."""

    root: Path  # the results root: the spec's output_dir
    name: str

    @classmethod
    def of(cls, sweep_path: Path) -> "SweepDir":
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
        """The main line of pre-training ``key``."""
        return StageRun(self.store / key)

    def pretrain_lines(self, key: str) -> list[StageRun]:
        """Every line of pre-training ``key`` on disk: the main line first, then its branches by name."""
        main = self.pretrain(key)
        branches = main.path / BRANCHES_DIR
        found = sorted(d for d in branches.iterdir() if d.is_dir()) if branches.is_dir() else []
        return [main] + [StageRun(d) for d in found]

    def pretrain_branch(self, key: str, name: str) -> StageRun:
        return StageRun(self.store / key / BRANCHES_DIR / name)

    def milestone_line(self, key: str, step: int) -> StageRun | None:
        """The line of pre-training ``key`` that keeps a state at ``step`` (the main line first), or None."""
        return next((line for line in self.pretrain_lines(key) if step in line.milestone_steps()), None)

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

    @property
    def driver_lock(self) -> Path:
        return self.path / DRIVER_LOCK

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


# ------------------------------------------------------------------------------------------------ writing and reading
def write_json(path: Path, data: Any) -> Path:
    """Write JSON whole or not at all: a reader (or a process killed mid-write) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single O_APPEND write: lines of concurrent processes stay whole."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """The whole records of a JSON-lines file; a line cut short (a process killed mid-write) is skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
