"""MLflow tracking against a real SQLite store: nesting, params, tags, metric histories, re-attached retries."""

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from maskdm_sweeps.spec import load_spec
from maskdm_sweeps.sweep import run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

BASE = {
    "data": {"name": "digits", "image_size": 8},
    "model": {"preset": "tiny"},
    "mask": {"strategy": "patch", "rate": 0.5},
    "pretrain": {"steps": 20, "batch_size": 16},
    "finetune": {"steps": 30, "batch_size": 16},
    "eval": {"num_samples": 32, "batch_size": 32, "sampling_steps": 4, "grid_size": 16,
             "backend": "digits-classifier", "every_steps": 15},
    "runtime": {"device": "cpu", "log_every_steps": 5, "checkpoint_every_steps": 5},
}


def make_plan(tmp_path: Path, name: str, sweep: dict, resources=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "output_dir": str(tmp_path / "results"), "base": BASE, "sweep": sweep,
            "resources": {"gpus": 0, "cpus": 1, **(resources or {})}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return load_spec(tmp_path / "spec.yaml")


def runs_of(plan):
    c = MlflowClient(f"sqlite:///{(Path(plan.spec.output_dir) / 'mlflow.db').resolve()}")
    exp = c.get_experiment_by_name(plan.spec.name)
    return c, c.search_runs([exp.experiment_id], max_results=1000)


def test_parent_and_child_runs_nest_with_params_tags_metrics_and_artifacts(tmp_path):
    plan = make_plan(tmp_path, "track", {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True})
    assert run_sweep(plan).exit_code == 0
    c, runs = runs_of(plan)
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == 2 + 3  # two shared pre-trainings, three fine-tunings
    assert parent.data.tags["spec_hash"] == plan.spec_hash and parent.data.tags["git_commit"]
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"spec.resolved.yaml", "plan.json"}
    pre = {r.data.tags["pretrain_key"]: r for r in children if r.data.tags["stage"] == "pretrain"}
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert params["finetune.steps"] == "30" and params["data.name"] == "digits"
        assert "cost/gpu_hours" in run.data.metrics and run.data.metrics["cost/wall_seconds"] > 0
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(5, (20 if tags["stage"] == "pretrain" else 30) + 1, 5))
        if tags["stage"] == "finetune":
            assert [m.step for m in c.get_metric_history(run.info.run_id, "eval/fid")] == [15, 30]
            assert {a.path for a in c.list_artifacts(run.info.run_id, "samples")} == {
                "samples/step_000000015.png", "samples/step_000000030.png"}
            if tags["pretrain_key"]:
                assert tags["pretrain_run_id"] == pre[tags["pretrain_key"]].info.run_id
            trial_dir = plan.trial_dir(tags["trial_id"]) / "finetune"
            assert json.loads((trial_dir / "mlflow_run.json").read_text())["run_id"] == run.info.run_id


def test_a_retried_trial_logs_into_the_run_it_started(tmp_path):
    plan = make_plan(tmp_path, "retry", {"axes": {"mask.rate": [0.5]}}, {"max_failures": 1})
    plan.sweep_dir.mkdir(parents=True)
    (plan.sweep_dir / "test-fault").write_text("finetune:17")
    assert run_sweep(plan).exit_code == 0
    c, runs = runs_of(plan)
    finetunes = [r for r in runs if r.data.tags.get("stage") == "finetune"]
    assert len(finetunes) == 1  # re-attached, not duplicated
    history = c.get_metric_history(finetunes[0].info.run_id, "train/loss")
    steps = sorted({m.step for m in history})
    assert steps == list(range(5, 31, 5))  # continuous: no gap where the process died
