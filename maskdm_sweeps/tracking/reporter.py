"""``MlflowReporter``: one nested MLflow run per stage run, re-attached on resume, buffered while a server is away.

The run id lives in ``<stage dir>/mlflow_run.json`` beside the checkpoints, so a retried or resumed stage logs into
the run it started (no duplicates, no split curves). Every record is first appended to
``<stage dir>/mlflow_buffer.jsonl`` (a write-ahead log), then sent in batches and dropped from the file once MLflow
took it. Records of a process killed before it sent them, or that an unreachable server refused, stay in the file
and are replayed, in order, by the next send of that stage (its retry or resume) or by ``maskdm-sweep sync``:
nothing is lost, even when the checkpoint that a resume starts from was written after them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..layout import (MLFLOW_BUFFER_FILE, MLFLOW_RUN_FILE, MLFLOW_TARGET_FILE, SAMPLES_DIR, append_jsonl, read_json,
                      read_jsonl, relative_path, write_json)
from ..trainer.reporter import NullReporter
from .store import client, flatten, portable_target, target_uri

log = logging.getLogger(__name__)
BATCH = 200  # metrics per log_batch call (MLflow accepts up to 1000)


class MlflowReporter(NullReporter):
    def __init__(self, uri: str, experiment_id: str, stage_dir: Path, run_name: str, parent_run_id: str | None,
                 tags: dict[str, str], params: dict, flush_every: int = 50):
        self.uri, self.experiment_id, self.stage_dir = uri, experiment_id, Path(stage_dir)
        self.flush_every = flush_every
        self.unsent_metrics = 0  # metric records appended since the last send
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.stage_dir / MLFLOW_TARGET_FILE, portable_target(uri, self.stage_dir))
        self.run_id = self._existing_run_id()
        # the create record carries everything needed to create the run later (replay, `maskdm-sweep sync`)
        self._enqueue({"op": "create", "experiment_id": experiment_id, "run_name": run_name,
                       "parent_run_id": parent_run_id, "tags": tags, "params": flatten(params)})
        self._flush()

    # ------------------------------------------------------------------------------------------ reporter
    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._enqueue({"op": "metrics", "step": step, "time": now, "values": values})
        self.unsent_metrics += 1
        if self.unsent_metrics >= self.flush_every or "eval/fid" in values:
            self._flush()

    def params(self, values: dict) -> None:
        self._enqueue({"op": "params", "values": {k: str(v) for k, v in values.items()}})

    def checkpoint(self, step: int, path: Path) -> None:
        self._enqueue({"op": "tags", "values": {"checkpoint": str(path)}})
        self._flush()

    def artifact(self, step: int, path: Path) -> None:
        # relative to the stage run (the buffer may be replayed after the run moved)
        self._enqueue({"op": "artifact", "path": relative_path(path, self.stage_dir), "dir": SAMPLES_DIR})
        self._flush()

    def finish(self, status: str = "FINISHED", cost: dict[str, float] | None = None) -> None:
        if cost:
            self._enqueue({"op": "metrics", "step": 0, "time": int(time.time() * 1000), "values": cost})
        self._enqueue({"op": "end", "status": status})
        self._flush()

    # ------------------------------------------------------------------------------------------ plumbing
    def _existing_run_id(self) -> str | None:
        record = read_json(self.stage_dir / MLFLOW_RUN_FILE)
        return record["run_id"] if record else None

    def _enqueue(self, record: dict) -> None:
        """Append to the write-ahead buffer: a record survives the process from this moment on."""
        append_jsonl(self.stage_dir / MLFLOW_BUFFER_FILE, record)

    def _flush(self) -> None:
        """Send the buffer's records in order; keep on disk whatever was not sent."""
        buffer = self.stage_dir / MLFLOW_BUFFER_FILE
        records = read_jsonl(buffer)  # a line cut short by a kill mid-write is skipped
        self.unsent_metrics = 0
        try:
            sent = send_records(self, records)
        except Exception as err:  # an unreachable server: training goes on, records wait on disk
            log.warning("MLflow unreachable (%s); buffering %d records in %s", type(err).__name__, len(records), buffer)
            sent = getattr(err, "sent", 0)
        remaining = records[sent:]
        if remaining:
            tmp = buffer.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in remaining))
            tmp.replace(buffer)  # whole, even if killed here
        elif buffer.exists():
            buffer.unlink()


class BufferReplayer(MlflowReporter):
    """Replays a stage directory's buffer without a training run (``maskdm-sweep sync``)."""

    def __init__(self, stage_dir: Path):
        self.stage_dir = Path(stage_dir)
        self.uri = target_uri(read_json(self.stage_dir / MLFLOW_TARGET_FILE), self.stage_dir)
        self.run_id = self._existing_run_id()
        self.unsent_metrics = 0

    def replay(self) -> int:
        """Send every buffered record; returns how many are still buffered (0 when the server took them all)."""
        self._flush()
        buffer = self.stage_dir / MLFLOW_BUFFER_FILE
        return len(buffer.read_text().splitlines()) if buffer.exists() else 0


def sync_buffers(root: Path) -> dict[Path, int]:
    """Replay every ``mlflow_buffer.jsonl`` under ``root``; returns the records left per stage directory."""
    return {p.parent: BufferReplayer(p.parent).replay() for p in sorted(Path(root).rglob(MLFLOW_BUFFER_FILE))}


class _Partial(Exception):
    def __init__(self, sent: int, cause: Exception):
        super().__init__(str(cause))
        self.sent = sent


def send_records(rep: MlflowReporter, records: list[dict]) -> int:
    """Send records in order, consecutive metric records as batches; returns how many were sent.

    On the first failure raises :class:`_Partial` carrying the count already sent, so the rest stays buffered.
    """
    from mlflow.entities import Metric

    c = client(rep.uri)
    i = 0
    try:
        while i < len(records):
            if records[i]["op"] == "metrics":
                j = i
                while j < len(records) and records[j]["op"] == "metrics":
                    j += 1
                _send_metrics(c, rep.run_id, [Metric(k, float(v), r["time"], r["step"])
                                              for r in records[i:j] for k, v in r["values"].items()])
                i = j
            else:
                _send_one(c, rep, records[i])
                i += 1
        return i
    except Exception as err:
        raise _Partial(i, err) from err


def _send_one(c, rep: MlflowReporter, record: dict) -> None:
    from mlflow.entities import Param, RunTag

    op = record["op"]
    if op == "create":
        if rep.run_id is not None and _run_exists(c, rep.run_id):  # re-attached: the run goes on
            c.update_run(rep.run_id, status="RUNNING")
            return
        tags = dict(record["tags"])
        if record["parent_run_id"]:
            tags["mlflow.parentRunId"] = record["parent_run_id"]
        run = c.create_run(record["experiment_id"], tags=tags, run_name=record["run_name"])
        rep.run_id = run.info.run_id
        write_json(rep.stage_dir / MLFLOW_RUN_FILE, {"run_id": rep.run_id, **portable_target(rep.uri, rep.stage_dir)})
        params = [Param(k, v[:6000]) for k, v in record["params"].items()]
        for i in range(0, len(params), 100):
            c.log_batch(rep.run_id, params=params[i : i + 100])
    elif op == "params":
        c.log_batch(rep.run_id, params=[Param(k, v) for k, v in record["values"].items()])
    elif op == "tags":
        c.log_batch(rep.run_id, tags=[RunTag(k, v) for k, v in record["values"].items()])
    elif op == "artifact":
        path = rep.stage_dir / record["path"]  # relative to the stage run (older buffers: absolute)
        if path.exists():
            c.log_artifact(rep.run_id, str(path), artifact_path=record["dir"])
    elif op == "end":
        c.set_terminated(rep.run_id, status=record["status"])


def _run_exists(c, run_id: str) -> bool:
    """Whether the store holds ``run_id``: a stage run copied to another results root without its MLflow store
    starts a new run there instead of failing on a run it does not know."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_run(run_id)
        return True
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _send_metrics(c, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), BATCH):
        c.log_batch(run_id, metrics=metrics[i : i + BATCH])
