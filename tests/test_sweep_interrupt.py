"""Ctrl-C: the first SIGINT stops every running stage after its next checkpoint and exits 130 with the resume
command; ``resume`` then finishes the sweep with nothing trained twice; the parent runs end KILLED and FINISHED."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import CHECKPOINTS_DIR, MLFLOW_DB, SweepDir
from maskdm_sweeps.testing import tiny_sweep_spec

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("maskdm-sweep"))
# Long enough that the pre-training is still running when the SIGINT sent after its first checkpoint arrives (seconds
# at a few dozen steps a second), short enough that the resume, which trains the rest of it, stays short.
PRETRAIN_STEPS = 1200


def events(layout: SweepDir) -> list[dict]:
    return [json.loads(line) for line in layout.events.read_text().splitlines()] if layout.events.exists() else []


def test_ctrl_c_stops_after_the_checkpoint_exits_130_and_resume_trains_nothing_twice(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            tiny_sweep_spec(
                "stop",
                tmp_path / "results",
                {"baseline": True},
                pretrain={"steps": PRETRAIN_STEPS},
                finetune={"steps": 200},
                runtime={"log_every_steps": 20, "checkpoint_every_steps": 40},
            )
        )
    )
    layout = SweepDir(tmp_path / "results", "stop")
    env = {**os.environ, "MASKDM_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(
        [EXE, "run", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 300
    # wait until the pre-training (phase 1, beside the baseline) has written a checkpoint
    while not any(e["event"] == "stage_start" and e["stage"] == "pretrain" for e in events(layout)) or not list(
        layout.store.glob(f"*/{CHECKPOINTS_DIR}/step_*.pt")
    ):
        assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)  # the driver alone, as `kill -INT <pid>` does
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, err[-3000:]
    stops = [e for e in events(layout) if e["event"] == "stage_interrupted"]
    assert any(e["stage"] == "pretrain" for e in stops), events(layout)
    for e in stops:
        assert f"stopped: {e['stage']} {e['key']} at step {e['step']}" in err
        assert 0 < e["step"] < PRETRAIN_STEPS and e["step"] % 40 == 0  # at a checkpoint, before the end
    assert f"maskdm-sweep resume {layout.path}" in err
    # the progress lines of a piped run say so too, with the step
    pre_stop = next(e for e in stops if e["stage"] == "pretrain")
    assert (
        f"stopped pretrain patch r=0.5 · s0 at step {pre_stop['step']:,} (its checkpoint; resume continues it)"
        in out.splitlines()
    ), out[-3000:]
    plan = json.loads(layout.plan_file.read_text())
    masked = {t["trial_id"] for t in plan["trials"] if t.get("pretrain_key")}
    fine_tuned = {e["trial_id"] for e in events(layout) if e["event"] == "stage_start" and e["stage"] == "finetune"}
    assert masked and not masked & fine_tuned  # phase 2 never started
    assert not layout.stop_request.exists()

    done = subprocess.run([EXE, "resume", str(layout.path)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    starts = [e for e in events(layout) if e["event"] == "stage_start"]
    for stop in stops:  # each stopped stage resumed from the checkpoint it stopped at: nothing trained twice
        resumed = [e for e in starts if e["key"] == stop["key"] and e["stage"] == stop["stage"]]
        assert [e["from_step"] for e in resumed] == [0, stop["step"]]
    assert all(len([e for e in starts if e["key"] == k]) <= 2 for k in {e["key"] for e in starts})

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / MLFLOW_DB}")
    runs = client.search_runs(
        [client.get_experiment_by_name("stop").experiment_id],
        filter_string="tags.kind = 'sweep'",
        order_by=["attributes.start_time ASC"],
    )
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
