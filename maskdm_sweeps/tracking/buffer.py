"""One MLflow run kept by a directory, with a write-ahead buffer of the records MLflow has not taken yet.

``<run dir>/mlflow_target.json`` says where the run goes (the store and the results root), ``mlflow_buffer.jsonl``
holds the records not yet sent, in order, and ``mlflow_run.json`` the run's id once it exists. A stage run's
directory is one; so is each sweep invocation's ``mlflow_parents/<n>/``.

No record stands in for what MLflow has not made yet: a ``create`` record names its experiment and its parent's run
directory, and both are resolved when it is sent (now, at the stage's next send, or by ``maskdm-sweep sync``), under
the results root's lock, so a store, an experiment and a run are each made once even when processes send at once.
A record is dropped only after MLflow took it; one sent again after a kill between the two changes nothing: params,
tags, artifacts and the end status are idempotent, a run is found again by its key, and a metric point whose (key,
step) the run already holds is skipped.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

from ..files import append_jsonl, read_json, read_jsonl, write_json
from ..layout import MLFLOW_BUFFER_FILE, MLFLOW_FILES_DIR, MLFLOW_RUN_FILE, MLFLOW_TARGET_FILE, relative_path
from .store import client, experiment_id_locked, portable_target, store_lock, target_uri

log = logging.getLogger(__name__)
BATCH = 200  # metrics per log_batch call (MLflow accepts up to 1000)
RUN_KEY_TAG = "run_key"  # the create record's key: finds a run whose creator died before it wrote mlflow_run.json


def create_record(
    experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str], parent_dir: Path | None = None
) -> dict:
    """The record that makes (or re-attaches) a run: the experiment by name, the parent by its run directory."""
    return {
        "op": "create",
        "experiment": experiment,
        "parent_dir": str(parent_dir) if parent_dir else None,
        "run_name": run_name,
        "tags": tags,
        "params": params,
        "key": uuid.uuid4().hex,
    }


class RunBuffer:
    """The run of one directory: :meth:`enqueue` records, :meth:`flush` sends what MLflow takes and keeps the rest."""

    def __init__(self, run_dir: Path, uri: str | None = None, results_root: Path | None = None):
        """With ``uri`` and ``results_root``: a run directory that sends there (written down); without: an existing
        run directory, read back (``maskdm-sweep sync``)."""
        self.dir = Path(run_dir)
        # paths are kept relative to the run directory: a sweep moved or copied with its results root sends to the
        # store beside it, never to the one it came from
        if uri is None:
            target = read_json(self.dir / MLFLOW_TARGET_FILE)
            uri, results_root = target_uri(target, self.dir), (self.dir / target["results_root"]).resolve()
        else:
            assert results_root is not None, "a run directory that sends needs the results root too"
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(
                self.dir / MLFLOW_TARGET_FILE,
                {**portable_target(uri, self.dir), "results_root": relative_path(results_root, self.dir)},
            )
        self.uri, self.results_root = uri, Path(results_root)
        self.run_id: str | None = self.stored_run_id()
        self.held: dict[str, set[int]] | None = None  # metric key -> the steps MLflow holds (read once at attach)
        self.failing = False  # the last send failed: the outage was reported

    @classmethod
    def existing(cls, run_dir: Path) -> RunBuffer | None:
        """The run directory ``run_dir`` read back, or None when it holds no ``mlflow_target.json``."""
        return cls(run_dir) if isinstance(read_json(Path(run_dir) / MLFLOW_TARGET_FILE), dict) else None

    @property
    def buffer(self) -> Path:
        return self.dir / MLFLOW_BUFFER_FILE

    def stored_run_id(self) -> str | None:
        record = read_json(self.dir / MLFLOW_RUN_FILE)
        return record["run_id"] if record else None

    def enqueue(self, record: dict) -> None:
        """Append to the write-ahead buffer: a record survives the process from this moment on. Paths in it are
        written relative to the run directory."""
        for field in ("path", "parent_dir"):
            if record.get(field):
                record = {**record, field: relative_path(record[field], self.dir)}
        append_jsonl(self.buffer, record)

    def enqueue_artifact(self, path: Path, artifact_dir: str | None = None, copy: bool = False) -> None:
        """Queue a file; ``copy``: send the file as it is now (a copy kept until sent), not as it is when sent."""
        path = Path(path)
        if copy and path.exists():
            kept = self.dir / MLFLOW_FILES_DIR / (artifact_dir or ".") / path.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, kept)
            path = kept
        self.enqueue({"op": "artifact", "path": str(path), "dir": artifact_dir})

    def enqueue_metrics(self, step: int, values: dict[str, float]) -> None:
        self.enqueue({"op": "metrics", "step": step, "time": int(time.time() * 1000), "values": values})

    def pending(self) -> int:
        """How many records wait in the buffer."""
        return len(read_jsonl(self.buffer))

    def flush(self) -> int:
        """Send the buffer's records in order; keep on disk whatever was not sent. Returns how many are left."""
        records = read_jsonl(self.buffer)  # a line cut short by a kill mid-write is skipped
        try:
            sent = self._send(records)
            self.failing = False
        except _Partial as err:  # an unreachable server: training goes on, records wait on disk
            if not self.failing:  # once per outage, not at every checkpoint
                log.warning(
                    "MLflow unreachable at %s (%s); records stay buffered in %s until it is back",
                    self.uri,
                    err,
                    self.buffer,
                )
            self.failing, sent = True, err.sent
        remaining = records[sent:]
        if remaining:
            tmp = self.buffer.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in remaining))
            tmp.replace(self.buffer)  # whole, even if killed here
        else:
            self.buffer.unlink(missing_ok=True)
            shutil.rmtree(self.dir / MLFLOW_FILES_DIR, ignore_errors=True)
        return len(remaining)

    # ------------------------------------------------------------------------------------------ sending
    def _send(self, records: list[dict]) -> int:
        """Send records in order, consecutive metric records as batches; returns how many were sent, or raises
        :class:`_Partial` with that count at the first failure."""
        i = 0
        try:
            c = client(self.uri, self.results_root)
            while i < len(records):
                if records[i]["op"] == "metrics":
                    j = i
                    while j < len(records) and records[j]["op"] == "metrics":
                        j += 1
                    self._send_metrics(c, records[i:j])
                    i = j
                else:
                    self._send_one(c, records[i])
                    i += 1
            return i
        except Exception as err:
            raise _Partial(i, err) from err

    def _send_one(self, c, record: dict) -> None:
        from mlflow.entities import Param, RunTag

        op = record["op"]
        if op == "create":
            self._attach_or_create(c, record)
            return
        if self.run_id is None:
            raise RuntimeError(f"{self.dir} has no MLflow run yet")
        if op == "params":
            c.log_batch(self.run_id, params=[Param(k, v) for k, v in record["values"].items()])
        elif op == "tags":
            c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in record["values"].items()])
        elif op == "artifact":
            path = self.dir / record["path"]  # relative to the run directory (older buffers: absolute)
            if path.exists():
                c.log_artifact(self.run_id, str(path), artifact_path=record["dir"])
            else:
                log.warning("%s is gone: not sent to MLflow run %s", record["path"], self.run_id)
        elif op == "end":
            c.set_terminated(self.run_id, status=record["status"])

    def _send_metrics(self, c, records: list[dict]) -> None:
        """Send the points whose (key, step) the run does not hold yet, the first of duplicates in the records."""
        from mlflow.entities import Metric

        if self.run_id is None:
            raise RuntimeError(f"{self.dir} has no MLflow run yet")
        held = self._held_steps(c)
        fresh, seen = [], set()
        for r in records:
            for key, value in r["values"].items():
                if r["step"] in held.get(key, ()) or (key, r["step"]) in seen:
                    continue
                seen.add((key, r["step"]))
                fresh.append(Metric(key, float(value), r["time"], r["step"]))
        for i in range(0, len(fresh), BATCH):
            batch = fresh[i : i + BATCH]
            c.log_batch(self.run_id, metrics=batch)
            for m in batch:  # only once MLflow took them: a failed batch is sent again
                held.setdefault(m.key, set()).add(m.step)

    def _held_steps(self, c) -> dict[str, set[int]]:
        """The steps of each metric MLflow holds for the run, read once after attaching to it."""
        if self.held is None:
            keys = c.get_run(self.run_id).data.metrics
            self.held = {key: {m.step for m in c.get_metric_history(self.run_id, key)} for key in keys}
        return self.held

    # ------------------------------------------------------------------------------------------ the run itself
    def _attach_or_create(self, c, record: dict) -> None:
        stored = self.stored_run_id()
        if stored is not None and _run_exists(c, stored):  # re-attached: the run goes on
            if stored != self.run_id:
                self.run_id, self.held = stored, None
            c.update_run(self.run_id, status="RUNNING")
            return
        c.get_experiment_by_name(record["experiment"])  # an unreachable server fails here, before the lock
        with store_lock(self.results_root):
            self.create_locked(c, record)

    def create_locked(self, c, record: dict) -> None:
        """Make the run of ``record`` once (the caller holds the store lock): found again by its key if a creator died
        before writing ``mlflow_run.json``; its experiment and its parent run made first where they are missing."""
        stored = self.stored_run_id()  # another process (a child making its parent) may have made it meanwhile
        if stored is not None and _run_exists(c, stored):
            self.run_id, self.held = stored, None
            return
        experiment_id = experiment_id_locked(c, self.uri, record["experiment"], self.results_root)
        found = c.search_runs([experiment_id], filter_string=f"tags.{RUN_KEY_TAG} = '{record['key']}'", max_results=1)
        if found:
            self.run_id, self.held = found[0].info.run_id, None
        else:
            tags = {**record["tags"], RUN_KEY_TAG: record["key"]}
            parent_dir = record.get("parent_dir")
            parent = _parent_run_id_locked(c, str(self.dir / parent_dir) if parent_dir else None)
            if parent is not None:
                tags["mlflow.parentRunId"] = parent
            self.run_id = c.create_run(experiment_id, tags=tags, run_name=record["run_name"]).info.run_id
            self.held = {}
        _log_params(c, self.run_id, record["params"])
        # written last: a run without its params is found again by its key and completed
        write_json(self.dir / MLFLOW_RUN_FILE, {"run_id": self.run_id, **portable_target(self.uri, self.dir)})


def _parent_run_id_locked(c, parent_dir: str | None) -> str | None:
    """The id of the parent run kept in ``parent_dir``; the run is made from its buffered create record if MLflow has
    not got it yet (its other records stay for its own sender)."""
    if not parent_dir:
        return None
    parent = RunBuffer.existing(Path(parent_dir))  # the caller resolved it against its own run directory
    create = next((r for r in read_jsonl(parent.buffer) if r["op"] == "create"), None) if parent else None
    if parent is not None and parent.run_id is None and create is not None:
        parent.create_locked(c, create)
    if parent is None or parent.run_id is None:
        log.warning("the parent run in %s cannot be found or made: the run is not nested", parent_dir)
        return None
    return parent.run_id


def _run_exists(c, run_id: str) -> bool:
    """Whether the store holds ``run_id``: a run directory copied to another results root without its MLflow store
    starts a new run there instead of failing on a run the store does not know."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_run(run_id)
        return True
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _log_params(c, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


class _Partial(Exception):
    def __init__(self, sent: int, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {str(cause)[:300]}")
        self.sent = sent
