"""A real ``mlflow server`` that goes away mid-sweep: training goes on, records are buffered, nothing is lost."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from maskdm_sweeps.layout import (
    CURVES_PARQUET,
    MLFLOW_BUFFER_FILE,
    PLAN_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    RESOLVED_SPEC,
    STAGE_METRICS,
    TRIALS_PARQUET,
    StageRun,
    SweepDir,
)
from maskdm_sweeps.testing import tiny_sweep_spec
from maskdm_sweeps.trainer import read_jsonl_metrics

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
BUFFER_FILE = MLFLOW_BUFFER_FILE  # a stage run's write-ahead buffer of MLflow records
LOG_EVERY, CHECKPOINT_EVERY = 5, 10  # steps; every checkpoint sends the buffer (MlflowReporter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 2 processes instead of 15 (docs/design.md)
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'server.db'}",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(tmp / "server.log", "ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # stopped already
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def buffered_metrics(root: Path, since_ms: int) -> dict[tuple[Path, int, tuple[str, ...]], dict[str, float]]:
    """The metric records in the write-ahead buffers under ``root`` stamped at or after ``since_ms``:
    (stage dir, step, keys) -> values."""
    found = {}
    for buffer in root.rglob(BUFFER_FILE):
        try:
            lines = buffer.read_text().splitlines()
        except FileNotFoundError:  # sent and removed meanwhile
            continue
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # being appended right now
                continue
            if rec["op"] == "metrics" and rec["time"] >= since_ms:
                found[(buffer.parent, rec["step"], tuple(sorted(rec["values"])))] = rec["values"]
    return found


def spans_a_failed_send(records: dict) -> bool:
    """Whether one stage buffered, during the outage, records more than a checkpoint interval apart: a checkpoint
    in between tried to send the older ones (the newer one was appended after that send returned) and kept them."""
    steps: dict[Path, list[int]] = {}
    for stage_dir, step, _ in records:
        steps.setdefault(stage_dir, []).append(step)
    return any(max(s) - min(s) >= CHECKPOINT_EVERY + LOG_EVERY for s in steps.values())


def on_server_approx(values: list[float]) -> list:
    """For ``x in on_server_approx(values)``: x is one of the values, up to float rounding."""
    return [pytest.approx(v) for v in values]


def server_history(c: MlflowClient, run_id: str, key: str) -> dict[int, list[float]]:
    """A run's points of one metric on the server: step -> values."""
    history: dict[int, list[float]] = {}
    for m in c.get_metric_history(run_id, key):
        history.setdefault(m.step, []).append(m.value)
    return history


def test_server_stopped_and_restarted_mid_sweep_loses_no_metric(tmp_path):
    port = free_port()
    spec = tiny_sweep_spec(
        "server",
        tmp_path / "results",
        {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True},
        pretrain={"steps": 30, "batch_size": 16},
        finetune={"steps": 60, "batch_size": 16},
        runtime={"log_every_steps": LOG_EVERY, "checkpoint_every_steps": CHECKPOINT_EVERY},
    )
    spec["tracking"] = {"mlflow_uri": f"http://127.0.0.1:{port}"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    server = start_server(tmp_path, port)
    env = {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    sweep = subprocess.Popen(
        [str(BIN / "maskdm-sweep"), "run", str(tmp_path / "spec.yaml")],
        env=env,
        stdout=open(tmp_path / "sweep.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    events = SweepDir(tmp_path / "results", "server").events
    results = tmp_path / "results"
    try:
        while not (events.exists() and "stage_done" in events.read_text()):  # some runs exist on the server
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.2)
        stop_server(server)
        down_since = int(time.time() * 1000)  # records stamped from now on were written while the server was down
        # Training goes on while the server is away, buffering what it cannot send. The server stays down until a
        # send during the outage failed and kept its records (or the sweep ended: all its last sends failed).
        outage: dict = {}  # every record seen in the buffers, written while the server was down
        deadline = time.monotonic() + 600  # liveness only
        while True:
            buffered = buffered_metrics(results, down_since)  # the buffers' content now
            outage.update(buffered)
            if spans_a_failed_send(buffered) or sweep.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert spans_a_failed_send(buffered), (
            f"no stage kept records over a checkpoint in its buffer while the server was down: {sorted(buffered)}\n"
            + (tmp_path / "sweep.log").read_text()[-3000:]
        )
        print(
            f"{len(outage)} metric records written while the server was down, in "
            f"{len({d for d, _, _ in outage})} stage runs"
        )
        server = start_server(tmp_path, port)
        assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        sync = subprocess.run(
            [str(BIN / "maskdm-sweep"), "sync", str(results)], capture_output=True, text=True, env=env
        )
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert not list(results.rglob(BUFFER_FILE))
        c = MlflowClient(f"http://127.0.0.1:{port}")

        def run_id(stage_dir: Path) -> str:
            path = StageRun(stage_dir).mlflow_run
            assert path.exists(), f"{stage_dir} has no MLflow run"
            return json.loads(path.read_text())["run_id"]

        # what was written while the server was down reached it, each value at its step
        for (stage_dir, step, keys), values in sorted(outage.items()):
            for key in keys:
                on_server = server_history(c, run_id(stage_dir), key).get(step, [])
                assert values[key] in on_server_approx(on_server), (stage_dir, step, key, values[key], on_server)
        # every metric point of every stage run is on the server with its value (the run may hold more: cost/*)
        stage_dirs = [p.parent for p in results.rglob(STAGE_METRICS)]
        assert len(stage_dirs) == 5  # 2 pre-trainings, 3 fine-tunings
        for stage_dir in stage_dirs:
            local = read_jsonl_metrics(StageRun(stage_dir).metrics)
            assert {"train/loss", "train/lr", "train/grad_norm"} <= {k for _, values in local for k in values}
            histories: dict[str, dict[int, list[float]]] = {}
            for step, values in local:
                for key, value in values.items():
                    if key not in histories:
                        histories[key] = server_history(c, run_id(stage_dir), key)
                    on_server = histories[key].get(step, [])
                    assert value in on_server_approx(on_server), (stage_dir, step, key, value, on_server)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop_server(server)


def test_a_sweep_run_while_mlflow_is_down_reaches_it_nested_through_sync(tmp_path):
    """No server when the sweep starts: everything is buffered, the parent run too; once a server is up, `sync` makes
    the experiment, the parent run with the spec, the results and the speed-ups, and every stage run under it."""
    from maskdm_sweeps.results import headline, headline_metrics, load

    port = free_port()
    results = tmp_path / "results"
    spec = tiny_sweep_spec(
        "down",
        results,
        {"axes": {"mask.rate": [0.5]}, "baseline": True},
        pretrain={"steps": 10},
        finetune={"steps": 10},
        eval={"num_samples": 16, "batch_size": 16, "sampling_steps": 2, "grid_size": 4},
        runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
    )
    spec["tracking"] = {"mlflow_uri": f"http://127.0.0.1:{port}"}  # nothing listens there yet
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run(
        [str(BIN / "maskdm-sweep"), "run", str(tmp_path / "spec.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert list(results.rglob(BUFFER_FILE)), "nothing was buffered"

    server = start_server(tmp_path, port)
    try:
        sync = subprocess.run(
            [str(BIN / "maskdm-sweep"), "sync", str(results)], capture_output=True, text=True, env=env, timeout=300
        )
        print(sync.stdout)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert not list(results.rglob(BUFFER_FILE))
        c = MlflowClient(f"http://127.0.0.1:{port}")
        assert c.search_runs(["0"]) == []  # nothing in Default
        runs = c.search_runs([c.get_experiment_by_name("down").experiment_id], max_results=100)
        (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
        assert parent.info.status == "FINISHED"
        files = {a.path for a in c.list_artifacts(parent.info.run_id)}
        assert {RESOLVED_SPEC, PLAN_FILE, REPORT_FILE, TRIALS_PARQUET, CURVES_PARQUET, PLOTS_DIR} <= files
        sweep_dir = SweepDir(results, "down").path
        answer = headline_metrics(headline(sweep_dir, *load(sweep_dir))[0])
        assert answer and parent.data.metrics == pytest.approx(answer)
        children = [r for r in runs if r is not parent]
        assert sorted(r.data.tags["stage"] for r in children) == ["finetune", "finetune", "pretrain"]
        for child in children:
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
            assert [m.step for m in c.get_metric_history(child.info.run_id, "train/loss")] == [5, 10]
    finally:
        stop_server(server)
