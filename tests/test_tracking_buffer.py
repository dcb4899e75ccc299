"""The MLflow reporter's write-ahead buffer: records of a process killed before it sent them reach MLflow through the
stage's next reporter (its retry or resume), and none twice, in a real SQLite store."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from maskdm_sweeps.layout import MLFLOW_BUFFER_FILE as BUFFER_FILE
from maskdm_sweeps.tracking.reporter import MlflowReporter
from maskdm_sweeps.tracking.store import default_tracking_uri, ensure_experiment


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store (its URI and results root) for the module: creating one takes seconds."""
    root = tmp_path_factory.mktemp("store")
    return default_tracking_uri(root), root


def reporter(store: tuple[str, Path], exp: str, stage_dir: Path) -> MlflowReporter:
    """A stage's reporter in experiment ``exp`` (by name), without a parent run."""
    uri, root = store
    return MlflowReporter(
        uri, root, exp, stage_dir, "stage", None, {"stage": "finetune"}, {"lr": 1e-3}, flush_every=1000
    )


def test_records_of_a_killed_process_are_sent_by_the_resumed_stage(store, tmp_path):
    stage_dir = tmp_path / "stage"
    first = reporter(store, "wal", stage_dir)
    for step in (5, 10, 15):
        first.metrics(step, {"train/loss": 1.0 / step})
    # killed here: nothing after the appends ran (no flush, no finish); the records are on disk only
    assert (stage_dir / BUFFER_FILE).read_text().count('"op": "metrics"') == 3
    del first

    resumed = reporter(store, "wal", stage_dir)  # re-attaches and replays the buffer first
    for step in (20, 25):
        resumed.metrics(step, {"train/loss": 1.0 / step})
    resumed.finish()
    c = MlflowClient(store[0])
    runs = c.search_runs([ensure_experiment(store[0], "wal", store[1])])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = c.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [5, 10, 15, 20, 25]
    assert not (stage_dir / BUFFER_FILE).exists()


def test_a_line_cut_short_by_a_kill_is_skipped(store, tmp_path):
    stage_dir = tmp_path / "stage"
    rep = reporter(store, "cut", stage_dir)
    rep.metrics(5, {"train/loss": 0.5})
    with open(stage_dir / BUFFER_FILE, "a") as f:
        f.write('{"op": "metrics", "step": 10, "val')  # the kill came mid-write
    rep = reporter(store, "cut", stage_dir)
    rep.finish()
    c = MlflowClient(store[0])
    run = c.search_runs([ensure_experiment(store[0], "cut", store[1])])[0]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [5]


def test_a_stage_resumed_after_a_kill_logs_no_step_twice(store, tmp_path):
    """Killed after a send and before it emptied its buffer, then resumed from its checkpoint at step 5: the records
    sent again and the steps trained again reach MLflow once each."""
    stage_dir = tmp_path / "stage"
    first = reporter(store, "once", stage_dir)
    for step in (5, 10, 15):
        first.metrics(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    before_send = (stage_dir / BUFFER_FILE).read_text()
    first.checkpoint(15, stage_dir / "step_15.pt")  # sends every buffered record ...
    assert not (stage_dir / BUFFER_FILE).exists()
    (stage_dir / BUFFER_FILE).write_text(before_send)  # ... but the kill came before the buffer was emptied
    del first

    resumed = reporter(store, "once", stage_dir)  # sends the buffer again, then trains steps 10 and 15 again
    for step in (10, 15, 20):
        resumed.metrics(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    resumed.finish(cost={"cost/wall_seconds": 2.0})
    c = MlflowClient(store[0])
    (run,) = c.search_runs([ensure_experiment(store[0], "once", store[1])])
    for key in ("train/loss", "train/lr"):
        steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [5, 10, 15, 20], (key, steps)
    assert [m.step for m in c.get_metric_history(run.info.run_id, "cost/wall_seconds")] == [20]  # the last step
