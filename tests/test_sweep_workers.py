"""Trials on several data-parallel workers: Ray Train inside a real Ray Tune sweep, gloo on the CPU.

The same smoke sweep (one trial, evaluated with FID and tracked in MLflow) runs once with one worker per trial and
once with two; in the two-worker run, worker 1 dies mid-stage. Both runs must end with the same files, MLflow runs and
parquet rows, and the same trained weights within float tolerance. (Each Ray Train worker group is slow to start on a
2-core machine, so the sweep is one stage run; masked pre-training under DDP is proven in test_data_parallel.py.)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from maskdm_sweeps.spec import SpecError, load_spec
from maskdm_sweeps.sweep import read_events, run_sweep
from maskdm_sweeps.trainer import load_latest_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

SPEC = {
    "name": "workers",
    "base": {
        "data": {"name": "digits", "image_size": 8},
        "model": {"preset": "tiny"},
        "mask": {"strategy": "patch", "rate": 0.5},
        "pretrain": {"steps": 0, "batch_size": 16},
        "finetune": {"steps": 30, "batch_size": 16},
        "eval": {"num_samples": 32, "batch_size": 32, "sampling_steps": 5, "grid_size": 16,
                 "backend": "digits-classifier"},
        "runtime": {"device": "cpu", "log_every_steps": 5, "checkpoint_every_steps": 10},
    },
    "sweep": {"axes": {"finetune.lr": [1e-3]}},
    "resources": {"gpus": 0, "cpus": 1, "max_failures": 1},
}
# runner state and the MLflow database, not results (the MLflow runs are compared through MLflow below)
IGNORED = {"tune", "events.jsonl", "invocations.json", "spec.resolved.yaml", "test-fault", "mlflow.db"}


def _write_spec(tmp_path: Path, workers: int) -> Path:
    spec = json.loads(json.dumps(SPEC))
    spec["output_dir"] = str(tmp_path / f"w{workers}")
    spec["resources"].update({"workers": workers, "cpus": 1 / workers})
    path = tmp_path / f"w{workers}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    plans = {}
    for workers in (1, 2):
        plan = load_spec(_write_spec(tmp, workers))
        if workers == 2:  # worker 1 of every fine-tuning dies at step 15, after the step-10 checkpoint
            plan.sweep_dir.mkdir(parents=True)
            (plan.sweep_dir / "test-fault").write_text("finetune:15:1")
        outcome = run_sweep(plan)
        assert outcome.exit_code == 0, outcome.failed
        plans[workers] = plan
    return plans


def _result_files(output_dir: Path) -> Counter:
    """Every file the sweep left under its output directory (shared pre-trainings too); MLflow run ids masked."""
    names = Counter()
    for p in output_dir.rglob("*"):
        parts = list(p.relative_to(output_dir).parts)
        if p.is_file() and not IGNORED & set(parts) and not p.name.startswith("."):
            if parts[0] == "mlartifacts":
                parts[2] = "<run id>"
            names["/".join(parts)] += 1
    return names


def test_two_workers_write_the_files_of_one_worker(runs):
    one, two = (_result_files(runs[w].spec.output_dir) for w in (1, 2))
    assert one == two
    assert "workers/trials.parquet" in one and sum(f.endswith("/result.json") for f in one) == 1


def test_two_workers_train_the_weights_of_one_worker(runs):
    out1, out2 = runs[1].spec.output_dir, runs[2].spec.output_dir
    stages = sorted(out1.rglob("checkpoints"))
    assert len(stages) == 1
    for ckpt_dir in stages:
        rel = ckpt_dir.relative_to(out1)
        (s1, p1), (s2, p2) = load_latest_checkpoint(ckpt_dir), load_latest_checkpoint(out2 / rel)
        assert p1.name == p2.name == "step_000000030.pt"
        for key, w in s1["model"].items():
            torch.testing.assert_close(s2["model"][key], w, rtol=1e-3, atol=1e-4, msg=f"{rel}: {key}")
        result = json.loads((out2 / rel.parent / "result.json").read_text())
        assert result["workers"] == 2
        assert len(result["replica_checksums"]) == 2 and len(set(result["replica_checksums"])) == 1


def test_a_dead_worker_restarts_its_group_from_the_last_checkpoint(runs):
    events = read_events(runs[2].sweep_dir)
    groups = Counter((e["stage"], e["trial_id"]) for e in events if e["event"] == "worker_group_start")
    finetunes = {(e["stage"], e["trial_id"]) for e in events if e["event"] == "stage_done" and e["stage"] == "finetune"}
    assert len(finetunes) == 1
    assert all(groups[key] == 2 for key in finetunes), groups  # started, worker 1 died at 15, restarted
    restarts = [e["newest_checkpoint"] for e in events if e["event"] == "worker_group_start" and e["stage"] == "finetune"]
    assert restarts == [None, "step_000000010.pt"]
    assert all(e["workers"] == 2 for e in events if e["event"] == "stage_done")
    # the restarted group resumed from the step-10 checkpoint: no step is missing; 15 was reported before the death
    for metrics in runs[2].sweep_dir.rglob("finetune/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
                 if json.loads(line)["kind"] == "metrics" and "train/loss" in json.loads(line)["values"]]
        assert sorted(set(steps)) == list(range(5, 31, 5))
        assert steps.count(15) == 2 and steps.count(10) == 1 and steps.count(20) == 1


def test_two_workers_give_the_parquet_rows_of_one_worker(runs):
    t1, t2 = (pd.read_parquet(runs[w].sweep_dir / "trials.parquet").sort_values("trial_id").reset_index(drop=True)
              for w in (1, 2))
    assert list(t1.columns) == list(t2.columns)
    assert list(t1["trial_id"]) == list(t2["trial_id"]) and len(t1) == 1
    for col in ("loss_final", "fid"):
        assert t2[col].to_numpy() == pytest.approx(t1[col].to_numpy(), rel=1e-2), col
    assert list(t1["gpus_per_trial"]) == [1.0] and list(t2["gpus_per_trial"]) == [2.0]  # all its GPUs
    for t, gpus in ((t1, 1), (t2, 2)):
        assert (t["gpu_hours"] * 3600 / gpus).to_numpy() == pytest.approx(t["wall_seconds"].to_numpy())
    c1, c2 = (pd.read_parquet(runs[w].sweep_dir / "curves.parquet") for w in (1, 2))
    key = ["trial_id", "stage", "metric", "step"]
    assert sorted(map(tuple, c1[key].drop_duplicates().to_numpy())) == sorted(map(tuple, c2[key].drop_duplicates().to_numpy()))


def test_two_workers_log_the_mlflow_runs_of_one_worker(runs):
    from mlflow import MlflowClient

    def summary(plan):
        client = MlflowClient(plan.spec.tracking.mlflow_uri or f"sqlite:///{plan.spec.output_dir / 'mlflow.db'}")
        runs_ = client.search_runs([client.get_experiment_by_name(plan.spec.name).experiment_id], max_results=100)
        return sorted((r.data.tags.get("stage", "sweep"), r.info.run_name, r.info.status,
                       tuple(sorted(k for k in r.data.params if k not in ("workers", "batch_per_worker",
                                                                           "seed_data", "seed_noise_and_masks"))),
                       tuple(sorted(r.data.metrics))) for r in runs_)

    one, two = summary(runs[1]), summary(runs[2])
    assert one == two
    assert Counter(s[0] for s in one) == Counter({"sweep": 1, "finetune": 1})
    assert all("eval/fid" in s[4] for s in one if s[0] != "sweep")  # rank 0's FID reaches the run


def test_a_batch_that_does_not_split_over_the_workers_is_refused_before_any_trial(tmp_path):
    path = _write_spec(tmp_path, 3)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert "finetune.batch_size 16 does not split evenly over resources.workers = 3" in text
    assert f"{path}:" in text  # names the file and line


def test_plan_counts_all_gpus_of_a_trial_and_says_how_the_batch_splits(tmp_path):
    from rich.console import Console

    from maskdm_sweeps.sweep.plan_view import print_plan, totals

    spec = tmp_path / "gpu.yaml"
    for workers in (1, 4):
        data = json.loads(json.dumps(SPEC))
        data["output_dir"] = str(tmp_path)
        data["resources"].update({"workers": workers, "gpus": 1, "cpus": 4})
        spec.write_text(yaml.safe_dump(data))
        plan = load_spec(spec)
        console = Console(record=True, width=400)
        tot = print_plan(plan, console)
        if workers == 1:
            one_gpu_hours = tot.gpu_hours
            continue
    text = console.export_text()
    assert "each trial trains on 4 data-parallel workers" in text and "16 = 4 x 4 images per step" in text
    assert "count all 4 GPUs" in text and "packing" not in text  # workers hold whole GPUs
    # 4 GPUs for a quarter of the time each (ideal data-parallel scaling): the same GPU-hours as one GPU
    assert tot.gpu_hours == pytest.approx(one_gpu_hours) and tot.gpu_hours > 0
