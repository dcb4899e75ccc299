"""Trials on several data-parallel workers: Ray Train inside a real Ray Tune sweep, gloo on the CPU.

The same smoke sweep (one trial, evaluated with FID and tracked in MLflow) runs once with one worker per trial and
once with two; in the two-worker run, worker 1 dies mid-stage. Both runs must end with the same files, MLflow runs and
parquet rows, and the same trained weights within float tolerance; what may differ: clocks, MLflow run ids, the
output directory in paths, and what says how many workers there were. Images and checkpoints are compared by name
(their weights are compared below). (Each Ray Train worker group is slow to start on a 2-core machine, so the sweep is
one stage run; masked pre-training under DDP is proven in test_data_parallel.py.)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from maskdm_sweeps import layout
from maskdm_sweeps.layout import MLFLOW_DB
from maskdm_sweeps.sweep import read_events, run_sweep
from maskdm_sweeps.sweepspec import SpecError, load_spec
from maskdm_sweeps.testing import crash_once, tiny_sweep_spec
from maskdm_sweeps.trainer import load_latest_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def _spec(output_dir: Path, workers: int = 1, **resources) -> dict:
    """One fine-tuning trial (no pre-training) evaluated with FID, on ``workers`` data-parallel workers."""
    return tiny_sweep_spec(
        "workers",
        output_dir,
        {"axes": {"finetune.lr": [1e-3]}},
        {"max_failures": 1, "workers": workers, "cpus": 1 / workers, **resources},
        pretrain={"steps": 0, "batch_size": 16},
        finetune={"steps": 30, "batch_size": 16},
        eval={"num_samples": 32, "batch_size": 32, "sampling_steps": 5, "grid_size": 16},
        runtime={"log_every_steps": 5, "checkpoint_every_steps": 10},
    )


# runner state and the MLflow database, not results (the MLflow runs are compared through MLflow below)
IGNORED = {
    layout.TUNE_DIR,
    layout.EVENTS_FILE,
    layout.INVOCATIONS_FILE,
    layout.RESOLVED_SPEC,
    layout.MLFLOW_DB,
    layout.DRIVER_LOG,
}  # logs: clocks
# What may differ between the two runs (fields, columns, params, metrics): clocks and what follows from them
# (wall seconds, images per second, device hours), run ids, and what counts the workers.
RUN_IDS = {"run_id", "mlflow_run_id"}
WORKER_COUNT = {
    "workers",
    "replica_checksums",
    "spec_hash",  # the spec holds resources.workers
    "batch_per_worker",
    "seed_data",
    "seed_noise_and_masks",
}  # params a data-parallel run adds
# the digests of state files: the files hold clocks (wall seconds) and weights equal only within float tolerance
DIGESTS = {"sha256", "init_sha256", "pretrain_sha256", "bytes"}
REL = 1e-2  # numbers that follow from weights equal within float tolerance (losses, FID)


def _is_clock(name: str) -> bool:
    return name == "time" or "wall_seconds" in name or name.endswith(("hours", "images_per_second"))


def _is_masked(name: str) -> bool:
    """Whether a field, column, param or metric ``name`` may differ between the two runs."""
    return (
        _is_clock(name)
        or name in RUN_IDS
        or name in WORKER_COUNT
        or name in DIGESTS
        or name.endswith(("_per_trial", "_billed"))
    )  # the devices a trial holds: one per worker


RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _write_spec(tmp_path: Path, workers: int) -> Path:
    path = tmp_path / f"w{workers}.yaml"
    path.write_text(yaml.safe_dump(_spec(tmp_path / f"w{workers}", workers)))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    plans = {}
    for workers in (1, 2):
        plan = load_spec(_write_spec(tmp, workers))
        # worker 1 of every fine-tuning dies once, at its report of step 20: after it reported step 15, before the
        # step-20 checkpoint (the step-10 one is the newest)
        outcome = run_sweep(plan, reporters=crash_once("finetune", 20, rank=1) if workers == 2 else None)
        assert outcome.exit_code == 0, outcome.failed
        plans[workers] = plan
    return plans


def _result_files(output_dir: Path) -> dict[str, list[Path]]:
    """Every file the sweep left under its output directory (shared pre-trainings too), by name with MLflow run ids
    masked."""
    files: dict[str, list[Path]] = {}
    for p in sorted(output_dir.rglob("*")):
        parts = list(p.relative_to(output_dir).parts)
        if p.is_file() and not IGNORED & set(parts) and not p.name.startswith("."):
            if parts[0] == layout.MLFLOW_ARTIFACTS_DIR:
                parts[2] = "<run id>"
            files.setdefault("/".join(parts), []).append(p)
    return files


def _same(a, b, where: str) -> None:
    """Equal JSON-like values, numbers within ``REL``."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif (
        isinstance(a, (int, float))
        and not isinstance(a, bool)
        and isinstance(b, (int, float))
        and not isinstance(b, bool)
        and not (math.isnan(a) and math.isnan(b))
    ):
        assert b == pytest.approx(a, rel=REL), where
    else:
        assert a == b, where


def _masked(value, output_dir: Path):
    """``value`` without the fields that may differ (``_is_masked``), the output directory named ``<out>``."""
    if isinstance(value, dict):
        return {k: _masked(v, output_dir) for k, v in value.items() if not _is_masked(k)}
    if isinstance(value, list):
        return [_masked(v, output_dir) for v in value]
    if isinstance(value, str):
        return RUN_ID.sub("<run id>", value.replace(str(output_dir), "<out>"))
    return value


def _jsonl_content(path: Path, output_dir: Path) -> dict:
    """A metrics.jsonl as what it says (the last record of a step wins, as in results/): params, metrics by step,
    checkpoints and artifacts; clocks masked."""
    params, metrics, files = {}, {}, set()
    for rec in map(json.loads, path.read_text().splitlines()):
        if rec["kind"] == "params":
            params.update(rec["values"])
        elif rec["kind"] == "metrics":
            metrics.update({f"{rec['step']} {k}": v for k, v in rec["values"].items()})
        else:
            files.add((rec["kind"], rec["step"], rec["path"]))
    metrics = {k: v for k, v in metrics.items() if not _is_masked(k.split(" ", 1)[1])}
    return _masked({"params": params, "metrics": metrics, "files": [list(f) for f in sorted(files)]}, output_dir)


def _table_rows(path: Path, output_dir: Path) -> list[dict]:
    """A parquet file's rows in a stable order, masked columns and clock metrics left out."""
    df = pd.read_parquet(path)
    df = df.astype(object).where(df.notna(), None)
    rows = [r for r in df.to_dict("records") if not _is_masked(str(r.get("metric")))]
    rows = _masked(rows, output_dir)
    return sorted(
        rows,
        key=lambda r: json.dumps({k: v for k, v in r.items() if not isinstance(v, float)}, sort_keys=True, default=str),
    )


def _report_content(path: Path, output_dir: Path) -> tuple[str, list[str], str]:
    """report.md as its text with numbers masked, its numbers, and its compute figure (device hours: a clock)."""
    text = _masked(path.read_text(), output_dir)
    compute = re.search(r"^- compute: (\S+) ", text, flags=re.M)
    assert compute, f"{path} names no compute figure"
    return NUMBER.sub("<n>", text), NUMBER.findall(text), compute.group(1)


def _same_content(name: str, p1: Path, p2: Path, out1: Path, out2: Path) -> None:
    if name.endswith(".json"):
        _same(_masked(json.loads(p1.read_text()), out1), _masked(json.loads(p2.read_text()), out2), name)
    elif name.endswith(".jsonl"):
        _same(_jsonl_content(p1, out1), _jsonl_content(p2, out2), name)
    elif name.endswith(".parquet"):
        _same(_table_rows(p1, out1), _table_rows(p2, out2), name)
    elif name.endswith(".md"):
        (text1, numbers1, hours1), (text2, numbers2, hours2) = _report_content(p1, out1), _report_content(p2, out2)
        assert text1 == text2, name
        assert len(numbers1) == len(numbers2), name
        for i, (x, y) in enumerate(zip(numbers1, numbers2, strict=True)):
            if x == hours1:  # the device hours of the one trial, wherever the report names them
                assert y == hours2, f"{name}: number {i}"
            else:
                assert float(y) == pytest.approx(float(x), rel=REL), f"{name}: number {i}: {x} vs {y}"
    elif name.endswith((".png", ".pt")):
        pass  # sample grids and plots (plots of clocks among them) and checkpoints: by name
    else:
        assert p1.read_bytes() == p2.read_bytes(), name


def test_two_workers_write_the_files_of_one_worker_with_the_same_content(runs):
    out1, out2 = (runs[w].spec.output_dir for w in (1, 2))
    one, two = _result_files(out1), _result_files(out2)
    assert Counter({k: len(v) for k, v in one.items()}) == Counter({k: len(v) for k, v in two.items()})
    assert f"workers/{layout.TRIALS_PARQUET}" in one and sum(Path(f).name == layout.STAGE_RESULT for f in one) == 1
    kinds = Counter(Path(name).suffix for name in one)
    assert {".json", ".jsonl", ".parquet", ".md", ".png", ".pt"} <= set(kinds), kinds
    for name in one:
        for p1, p2 in zip(one[name], two[name], strict=True):
            _same_content(name, p1, p2, out1, out2)


def test_two_workers_train_the_weights_of_one_worker(runs):
    out1, out2 = runs[1].spec.output_dir, runs[2].spec.output_dir
    stages = sorted(out1.rglob(layout.CHECKPOINTS_DIR))
    assert len(stages) == 1
    for ckpt_dir in stages:
        rel = ckpt_dir.relative_to(out1)
        (s1, p1), (s2, p2) = load_latest_checkpoint(ckpt_dir), load_latest_checkpoint(out2 / rel)
        assert p1.name == p2.name == "step_000000030.pt"
        for key, w in s1["model"].items():
            torch.testing.assert_close(s2["model"][key], w, rtol=1e-3, atol=1e-4, msg=f"{rel}: {key}")
        result = json.loads(layout.StageRun(out2 / rel.parent).result.read_text())
        assert result["workers"] == 2
        assert len(result["replica_checksums"]) == 2 and len(set(result["replica_checksums"])) == 1


def test_a_dead_worker_restarts_its_group_from_the_last_checkpoint(runs):
    events = read_events(runs[2].sweep_dir)
    groups = Counter((e["stage"], e["trial_id"]) for e in events if e["event"] == "worker_group_start")
    finetunes = {(e["stage"], e["trial_id"]) for e in events if e["event"] == "stage_done" and e["stage"] == "finetune"}
    assert len(finetunes) == 1
    assert all(groups[key] == 2 for key in finetunes), groups  # started, worker 1 died at 20, restarted
    restarts = [
        e["newest_checkpoint"] for e in events if e["event"] == "worker_group_start" and e["stage"] == "finetune"
    ]
    assert restarts == [None, "step_000000010.pt"]
    assert all(e["workers"] == 2 for e in events if e["event"] == "stage_done")
    # the restarted group resumed from the step-10 checkpoint: no step is missing; 15 was reported before the death
    for metrics in runs[2].sweep_dir.rglob(f"{layout.FINETUNE_DIR}/{layout.STAGE_METRICS}"):
        steps = [
            json.loads(line)["step"]
            for line in metrics.read_text().splitlines()
            if json.loads(line)["kind"] == "metrics" and "train/loss" in json.loads(line)["values"]
        ]
        assert sorted(set(steps)) == list(range(5, 31, 5))
        assert steps.count(15) == 2 and steps.count(10) == 1 and steps.count(20) == 1


def test_two_workers_give_the_parquet_rows_of_one_worker(runs):
    t1, t2 = (
        pd.read_parquet(runs[w].layout.trials_parquet).sort_values("trial_id").reset_index(drop=True) for w in (1, 2)
    )
    assert list(t1.columns) == list(t2.columns)
    assert list(t1["trial_id"]) == list(t2["trial_id"]) and len(t1) == 1
    for col in ("loss_final", "fid"):
        assert t2[col].to_numpy() == pytest.approx(t1[col].to_numpy(), rel=1e-2), col
    outs = [runs[w].spec.output_dir for w in (1, 2)]
    for name in (layout.TRIALS_PARQUET, layout.CURVES_PARQUET):  # every other column and curve point alike too
        _same(*(_table_rows(runs[w].sweep_dir / name, out) for w, out in zip((1, 2), outs, strict=True)), name)
    assert list(t1["devices_per_trial"]) == [1.0] and list(t2["devices_per_trial"]) == [2.0]  # all its devices
    for t, devices in ((t1, 1), (t2, 2)):
        assert (t["device_hours"] * 3600 / devices).to_numpy() == pytest.approx(t["wall_seconds"].to_numpy())
        assert list(t["gpus_per_trial"]) == [0.0] and list(t["gpu_hours"]) == [0.0]  # a CPU trial bills no GPU
    c1, c2 = (pd.read_parquet(runs[w].layout.curves_parquet) for w in (1, 2))
    key = ["trial_id", "stage", "metric", "step"]
    assert sorted(map(tuple, c1[key].drop_duplicates().to_numpy())) == sorted(
        map(tuple, c2[key].drop_duplicates().to_numpy())
    )
    assert "train/images_per_second" in set(c1["metric"])  # a clock: its values are left out above


def test_two_workers_log_the_mlflow_runs_of_one_worker(runs):
    from mlflow import MlflowClient

    def summary(plan):
        client = MlflowClient(plan.spec.tracking.mlflow_uri or f"sqlite:///{plan.spec.output_dir / MLFLOW_DB}")
        runs_ = client.search_runs([client.get_experiment_by_name(plan.spec.name).experiment_id], max_results=100)
        return sorted(
            (
                r.data.tags.get("stage", "sweep"),
                r.info.run_name,
                r.info.status,
                tuple(sorted(k for k in r.data.params if k not in WORKER_COUNT)),
                tuple(sorted(r.data.metrics)),
            )
            for r in runs_
        )

    def values(plan):
        """Per run: its params but the data-parallel ones, and every metric but the clocks as step -> value (a step
        logged again after the restart: its last value)."""
        client = MlflowClient(plan.spec.tracking.mlflow_uri or f"sqlite:///{plan.spec.output_dir / MLFLOW_DB}")
        runs_ = client.search_runs([client.get_experiment_by_name(plan.spec.name).experiment_id], max_results=100)
        return {
            r.info.run_name: _masked(
                {
                    "params": r.data.params,
                    "metrics": {
                        key: {
                            str(m.step): m.value
                            for m in sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.timestamp)
                        }
                        for key in r.data.metrics
                    },
                },
                plan.spec.output_dir,
            )
            for r in runs_
        }

    one, two = summary(runs[1]), summary(runs[2])
    assert one == two
    assert Counter(s[0] for s in one) == Counter({"sweep": 1, "finetune": 1})
    assert all("eval/fid" in s[4] for s in one if s[0] != "sweep")  # rank 0's FID reaches the run
    _same(values(runs[1]), values(runs[2]), "mlflow")


def test_a_batch_that_does_not_split_over_the_workers_is_refused_before_any_trial(tmp_path):
    path = _write_spec(tmp_path, 3)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert "finetune.batch_size 16 does not split evenly over resources.workers = 3" in text
    assert f"{path}:" in text  # names the file and line


def test_plan_counts_all_gpus_of_a_trial_and_says_how_the_batch_splits(tmp_path):
    from rich.console import Console

    from maskdm_sweeps.sweep.plan_view import print_plan

    spec = tmp_path / "gpu.yaml"
    for workers in (1, 4):
        spec.write_text(yaml.safe_dump(_spec(tmp_path, workers, gpus=1, cpus=4)))
        plan = load_spec(spec)
        console = Console(record=True, width=400)
        tot = print_plan(plan, console)
        if workers == 1:
            one = tot
            continue
    text = console.export_text()
    assert "each trial trains on 4 data-parallel workers" in text and "16 = 4 x 4 images per step" in text
    assert "count all 4 GPUs" in text and "packing" not in text  # workers hold whole GPUs
    # training: 4 GPUs for a quarter of the time each (ideal data-parallel scaling), the same GPU-hours as one GPU;
    # evaluation runs on rank 0 while the other 3 wait, so all 4 GPUs are charged for its whole time
    assert tot.train_gpu_hours == pytest.approx(one.train_gpu_hours) and tot.train_gpu_hours > 0
    assert tot.eval_gpu_hours == pytest.approx(4 * one.eval_gpu_hours) and tot.eval_gpu_hours > 0
