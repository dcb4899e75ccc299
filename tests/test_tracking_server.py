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

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 2 processes instead of 15 (DESIGN.md)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(tmp / "server.log", "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_server_stopped_and_restarted_mid_sweep_loses_no_metric(tmp_path):
    port = free_port()
    spec = {
        "name": "server", "output_dir": str(tmp_path / "results"),
        "base": {"data": {"name": "digits", "image_size": 8}, "model": {"preset": "tiny"},
                 "mask": {"strategy": "patch", "rate": 0.5}, "pretrain": {"steps": 30, "batch_size": 16},
                 "finetune": {"steps": 60, "batch_size": 16},
                 "eval": {"num_samples": 0, "backend": "digits-classifier"},
                 "runtime": {"device": "cpu", "log_every_steps": 5, "checkpoint_every_steps": 10}},
        "sweep": {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True},
        "resources": {"gpus": 0, "cpus": 1},
        "tracking": {"mlflow_uri": f"http://127.0.0.1:{port}"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    server = start_server(tmp_path, port)
    env = {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    sweep = subprocess.Popen([str(BIN / "maskdm-sweep"), "run", str(tmp_path / "spec.yaml")], env=env,
                             stdout=open(tmp_path / "sweep.log", "wb"), stderr=subprocess.STDOUT)
    events = tmp_path / "results" / "server" / "events.jsonl"
    try:
        while not (events.exists() and "stage_done" in events.read_text()):  # some runs exist on the server
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(1)
        stop_server(server)
        buffered, deadline = False, time.time() + 20
        while time.time() < deadline:  # training goes on while the server is away, buffering what it cannot send
            buffered = buffered or bool(list((tmp_path / "results").rglob("mlflow_buffer.jsonl")))
            time.sleep(0.5)
        assert buffered, "no record was buffered while the server was down"
        server = start_server(tmp_path, port)
        assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        sync = subprocess.run([str(BIN / "maskdm-sweep"), "sync", str(tmp_path / "results")],
                              capture_output=True, text=True, env=env)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert not list((tmp_path / "results").rglob("mlflow_buffer.jsonl"))
        c = MlflowClient(f"http://127.0.0.1:{port}")
        stage_dirs = [p.parent for p in (tmp_path / "results").rglob("metrics.jsonl")]
        assert len(stage_dirs) == 5  # 2 pre-trainings, 3 fine-tunings
        for stage_dir in stage_dirs:
            local = {}
            for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec["kind"] == "metrics" and "train/loss" in rec["values"]:
                    local[rec["step"]] = rec["values"]["train/loss"]
            run_id = json.loads((stage_dir / "mlflow_run.json").read_text())["run_id"]
            remote = {m.step: m.value for m in c.get_metric_history(run_id, "train/loss")}
            assert remote == pytest.approx(local), stage_dir
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop_server(server)
