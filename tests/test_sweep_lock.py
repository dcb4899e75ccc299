"""One driver per sweep directory: a second ``run`` or ``resume`` is refused with exit 2 naming the holder, before
anything starts; a lock left by a dead driver never blocks; two concurrent runs train every stage once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import DRIVER_LOCK, MLFLOW_DB, RESOLVED_SPEC, SweepDir
from maskdm_sweeps.sweep.lock import DriverLock, SweepLocked
from maskdm_sweeps.testing import tiny_sweep_spec

EXE = str(Path(sys.executable).with_name("maskdm-sweep"))


def write_spec(tmp_path: Path) -> Path:
    spec = tiny_sweep_spec(
        "locked",
        tmp_path / "results",
        {"axes": {"mask.rate": [0.25, 0.5]}, "baseline": True},
        pretrain={"batch_size": 16},
        finetune={"batch_size": 16},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def env(tmp_path: Path) -> dict:
    return {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}


def test_a_second_driver_is_refused_with_exit_2_naming_the_holder_before_anything_starts(tmp_path):
    spec = write_spec(tmp_path)
    layout = SweepDir(tmp_path / "results", "locked")
    with DriverLock(layout):
        layout.resolved_spec.write_text(spec.read_text())  # what `resume` reads
        for command in (["run", str(spec)], ["resume", str(layout.path)]):
            out = subprocess.run([EXE, *command], capture_output=True, text=True, env=env(tmp_path), timeout=120)
            assert out.returncode == 2, out.stderr
            assert f"pid {os.getpid()}" in out.stderr and "another maskdm-sweep driver" in out.stderr, out.stderr
        # refused before anything starts: no Ray log, no Tune state, no event (tests never time things)
        assert sorted(p.name for p in layout.path.iterdir()) == sorted([DRIVER_LOCK, RESOLVED_SPEC])
        with pytest.raises(SweepLocked):  # and in-process alike
            DriverLock(layout)


def test_a_lock_left_by_a_dead_driver_does_not_block(tmp_path):
    layout = SweepDir(tmp_path / "results", "stale")
    layout.path.mkdir(parents=True)
    layout.driver_lock.write_text(json.dumps({"pid": 999_999, "host": "gone"}))  # no process holds it
    with DriverLock(layout):
        assert json.loads(layout.driver_lock.read_text())["pid"] == os.getpid()
    with DriverLock(layout):  # released: taken again
        pass


@pytest.mark.slow
def test_two_concurrent_runs_train_each_stage_once(tmp_path):
    spec = write_spec(tmp_path)
    layout = SweepDir(tmp_path / "results", "locked")
    first = subprocess.Popen(
        [EXE, "run", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path)
    )
    deadline = time.monotonic() + 120
    while not layout.driver_lock.exists() or not layout.driver_lock.read_text():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.2)
    second = subprocess.run([EXE, "run", str(spec)], capture_output=True, text=True, env=env(tmp_path), timeout=300)
    _out, err = first.communicate(timeout=900)
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in layout.events.read_text().splitlines()]
    starts = [(e["stage"], e["key"]) for e in events if e["event"] == "stage_start"]
    assert len(starts) == len(set(starts)) == 2 + 3  # two pre-trainings and three fine-tunings, each once

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / MLFLOW_DB}")
    runs = client.search_runs([client.get_experiment_by_name("locked").experiment_id])
    assert len(runs) == 1 + 5  # one parent, one child per stage run
