"""Two sweeps of one results root start tracking at the same moment on a fresh default store: the store, the shared
experiment and each run are made once, and no run lands in MLflow's Default experiment."""

import multiprocessing as mp
from pathlib import Path

import yaml
from mlflow import MlflowClient

from maskdm_sweeps.layout import MLFLOW_BUFFER_FILE
from maskdm_sweeps.testing import tiny_sweep_spec
from maskdm_sweeps.tracking import default_tracking_uri

EXPERIMENT = "shared"


def track_one_sweep(spec_path: Path, start, done) -> None:
    """A driver's tracking calls and one stage run's, without training: parent run, child run, close."""
    from maskdm_sweeps.sweepspec import load_spec
    from maskdm_sweeps.tracking import finish_sweep_tracking, start_sweep_tracking

    plan = load_spec(spec_path)
    trial = plan.trials[0]
    start.wait()  # both processes are ready: they create the store and the experiment at the same moment
    tracking = start_sweep_tracking(plan, 1, resume=False)
    (child,) = tracking.reporters(trial, "finetune", plan.layout.finetune(trial.trial_id).path)
    child.metrics(1, {"train/loss": 1.0})
    child.finish()
    finish_sweep_tracking(tracking, "FINISHED")
    done.put(plan.spec.name)


def test_two_sweeps_starting_at_once_share_one_store_and_one_experiment(tmp_path):
    root = tmp_path / "results"
    specs = []
    for name in ("left", "right"):
        spec = tiny_sweep_spec(name, root)
        spec["tracking"] = {"experiment": EXPERIMENT}
        specs.append(tmp_path / f"{name}.yaml")
        specs[-1].write_text(yaml.safe_dump(spec))
    ctx = mp.get_context("fork")  # the test process has imported mlflow, and opened no store yet
    start, done = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=track_one_sweep, args=(path, start, done)) for path in specs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(done.get(timeout=5) for _ in procs) == ["left", "right"]

    c = MlflowClient(default_tracking_uri(root))
    assert sorted(e.name for e in c.search_experiments()) == ["Default", EXPERIMENT]
    assert c.search_runs(["0"]) == []  # nothing in Default
    runs = c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id])
    parents = {r.data.tags["sweep"]: r for r in runs if r.data.tags.get("kind") == "sweep"}
    children = [r for r in runs if r.data.tags.get("kind") != "sweep"]
    assert sorted(parents) == ["left", "right"] and len(children) == 2
    for child in children:  # each under its own sweep's parent
        assert child.data.tags["mlflow.parentRunId"] == parents[child.data.tags["sweep"]].info.run_id
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert not list(root.rglob(MLFLOW_BUFFER_FILE))  # everything was sent
