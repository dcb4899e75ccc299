"""``MlflowReporter``: one nested MLflow run per stage run, re-attached on resume, buffered while a server is away.

The run id lives in ``<stage dir>/mlflow_run.json`` beside the checkpoints, so a retried or resumed stage logs into
the run it started (no duplicates, no split curves). Every record is first appended to
``<stage dir>/mlflow_buffer.jsonl`` (a write-ahead log), then sent in batches and dropped from the file once MLflow
took it (:mod:`.buffer`). Records of a process killed before it sent them, or that an unreachable server refused,
stay in the file and are replayed, in order, by the next send of that stage (its retry or resume) or by
``maskdm-sweep sync``: nothing is lost, even when the checkpoint that a resume starts from was written after them,
and nothing is logged twice: the steps a resumed stage trains again are already in MLflow and are skipped.
"""

from __future__ import annotations

from pathlib import Path

from ..layout import MLFLOW_BUFFER_FILE, SAMPLES_DIR, is_parent_run_dir
from ..trainer.reporter import NullReporter
from .buffer import RunBuffer, create_record
from .store import flatten


class MlflowReporter(NullReporter):
    """The reporter of one stage run: its run in experiment ``experiment``, nested under the parent run kept in
    ``parent_dir`` (both made when first sent, wherever they are missing)."""

    def __init__(
        self,
        uri: str,
        results_root: Path,
        experiment: str,
        stage_dir: Path,
        run_name: str,
        parent_dir: Path | None,
        tags: dict[str, str],
        params: dict,
        flush_every: int = 50,
    ):
        self.run = RunBuffer(stage_dir, uri, results_root)
        self.flush_every = flush_every
        self.unsent_metrics = 0  # metric records appended since the last send
        self.last_step = 0  # the newest step reported: where the stage's cost is logged
        # the create record carries everything needed to create the run later (replay, `maskdm-sweep sync`)
        self.run.enqueue(create_record(experiment, run_name, tags, flatten(params), parent_dir))
        self._flush()

    @property
    def run_id(self) -> str | None:
        return self.run.run_id

    # ------------------------------------------------------------------------------------------ reporter
    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.last_step = max(self.last_step, step)
        self.run.enqueue_metrics(step, values)
        self.unsent_metrics += 1
        if self.unsent_metrics >= self.flush_every or "eval/fid" in values:
            self._flush()

    def params(self, values: dict) -> None:
        self.run.enqueue({"op": "params", "values": {k: str(v) for k, v in values.items()}})

    def checkpoint(self, step: int, path: Path) -> None:
        self.last_step = max(self.last_step, step)
        self.run.enqueue({"op": "tags", "values": {"checkpoint": str(path)}})
        self._flush()

    def artifact(self, step: int, path: Path) -> None:
        self.run.enqueue_artifact(path, SAMPLES_DIR)
        self._flush()

    def finish(self, status: str = "FINISHED", cost: dict[str, float] | None = None) -> None:
        if cost:
            # at the stage's last step: a pre-training line extended later logs its new cost at a new step
            self.run.enqueue_metrics(self.last_step, cost)
        self.run.enqueue({"op": "end", "status": status})
        self._flush()

    def _flush(self) -> None:
        self.unsent_metrics = 0
        self.run.flush()


def sync_buffers(root: Path) -> dict[Path, int]:
    """Replay every run directory's buffer under ``root``, the sweeps' parent runs first (they make the experiment
    and the parent that the stage runs nest under); returns the records left per run directory."""
    run_dirs = sorted(
        (p.parent for p in Path(root).rglob(MLFLOW_BUFFER_FILE)), key=lambda d: (not is_parent_run_dir(d), str(d))
    )
    runs = [run for run in map(RunBuffer.existing, run_dirs) if run is not None]  # each knows where it goes
    return {run.dir: run.flush() for run in runs}
