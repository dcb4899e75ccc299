"""The MLflow reporter's write-ahead buffer: records of a process killed before it sent them reach MLflow through the
stage's next reporter (its retry or resume), in a real SQLite store."""

from mlflow import MlflowClient

from maskdm_sweeps.layout import MLFLOW_BUFFER_FILE as BUFFER_FILE
from maskdm_sweeps.tracking.reporter import MlflowReporter
from maskdm_sweeps.tracking.store import default_tracking_uri, ensure_experiment


def reporter(uri: str, exp: str, stage_dir) -> MlflowReporter:
    return MlflowReporter(uri, exp, stage_dir, "stage", None, {"stage": "finetune"}, {"lr": 1e-3}, flush_every=1000)


def test_records_of_a_killed_process_are_sent_by_the_resumed_stage(tmp_path):
    uri = default_tracking_uri(tmp_path)
    exp = ensure_experiment(uri, "wal", tmp_path / "artifacts")
    stage_dir = tmp_path / "stage"
    first = reporter(uri, exp, stage_dir)
    for step in (5, 10, 15):
        first.metrics(step, {"train/loss": 1.0 / step})
    # killed here: nothing after the appends ran (no flush, no finish); the records are on disk only
    assert (stage_dir / BUFFER_FILE).read_text().count('"op": "metrics"') == 3
    del first

    resumed = reporter(uri, exp, stage_dir)  # re-attaches and replays the buffer first
    for step in (20, 25):
        resumed.metrics(step, {"train/loss": 1.0 / step})
    resumed.finish()
    c = MlflowClient(uri)
    runs = c.search_runs([exp])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = c.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [5, 10, 15, 20, 25]
    assert not (stage_dir / BUFFER_FILE).exists()


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
    uri = default_tracking_uri(tmp_path)
    exp = ensure_experiment(uri, "cut", tmp_path / "artifacts")
    stage_dir = tmp_path / "stage"
    rep = reporter(uri, exp, stage_dir)
    rep.metrics(5, {"train/loss": 0.5})
    with open(stage_dir / BUFFER_FILE, "a") as f:
        f.write('{"op": "metrics", "step": 10, "val')  # the kill came mid-write
    rep = reporter(uri, exp, stage_dir)
    rep.finish()
    run = MlflowClient(uri).search_runs([exp])[0]
    assert [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")] == [5]
