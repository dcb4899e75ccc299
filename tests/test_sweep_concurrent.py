"""Two sweeps started together on one results root (two ``maskdm-sweep run`` drivers, each with its own local Ray)
that share pre-training runs: both exit 0 with ``max_failures: 0``, no Tune trial fails, a run both need at one
length is trained once, and lengths asked of one run at once (40 by one sweep, 30 by the other) are trained on one
line 0 -> 40 that keeps 30, not on a line and then a branch.

The order is made certain, not left to the race: the test holds the lock of the shared run ``key1``, as a third
process training it would, until both sweeps' units for it wait there (each has asked for its length), so one of
them trains it afterwards while the other waits and finds it kept. Each driver runs one unit at a time, sweep A
``key2`` first: A trains ``key2`` to 40 before sweep B, held up at ``key1``, gets to ``key2``, so 30 can only come
from B's ask.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import BRANCHES_DIR, StageRun, SweepDir, read_json, read_jsonl
from maskdm_sweeps.sweep.lock import LineLock
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.testing import tiny_sweep_spec

SWEEP = Path(sys.executable).parent / "maskdm-sweep"

pytestmark = pytest.mark.slow


def _spec(path: Path, name: str, out: Path, rates: list[float], steps: list[int]) -> Path:
    """One trial per (mask rate, pre-training length), run one unit at a time in that order; no retries."""
    spec = tiny_sweep_spec(
        name,
        out,
        {"zip": {"mask.rate": rates, "pretrain.steps": steps}},
        {"max_failures": 0, "max_concurrent_trials": 1},
        finetune={"steps": 2},
    )
    path.write_text(yaml.safe_dump(spec))
    return path


def _key(spec: Path, rate: float) -> str:
    keys = [t.pretrain_key for t in load_spec(spec).trials if getattr(t.config.mask, "rate", None) == rate]
    return next(k for k in keys if k is not None)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"<no {path}>"


def _waiting_units(run: StageRun, drivers: dict[str, subprocess.Popen]) -> int:
    """How many processes other than the drivers have asked a length of ``run`` (a unit asks before it waits)."""
    pids = {(read_json(path) or {}).get("pid") for path in run.asked_files()}
    return len(pids - {None} - {d.pid for d in drivers.values()})


def _pretrain_starts(out: Path, key: str) -> list[dict]:
    """The stage_start events of pre-training ``key`` (any of its lines) over both sweeps."""
    return [
        e
        for name in ("sweep-a", "sweep-b")
        for e in read_jsonl(SweepDir(out, name).events)
        if e["event"] == "stage_start" and e["stage"] == "pretrain" and e["key"].split("/")[0] == key
    ]


def test_two_sweeps_started_together_train_each_shared_run_once_and_fail_nothing(tmp_path):
    out = tmp_path / "results"
    spec_a = _spec(tmp_path / "a.yaml", "sweep-a", out, [0.25, 0.5], [40, 40])
    spec_b = _spec(tmp_path / "b.yaml", "sweep-b", out, [0.5, 0.25], [40, 30])
    key1, key2 = _key(spec_a, 0.5), _key(spec_a, 0.25)
    assert key1 == _key(spec_b, 0.5) and key2 == _key(spec_b, 0.25), "the sweeps must share both pre-training runs"
    store = SweepDir(out, "sweep-a")
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    ray_tmp = [Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")) for _ in logs]  # short: Unix socket paths
    drivers: dict[str, subprocess.Popen] = {}

    def context() -> str:
        return "".join(f"\n--- sweep {n} output tail:\n{_tail(p)}" for n, p in logs.items())

    try:
        with LineLock(store.pretrain(key1)):  # key1 is "being trained" until both sweeps wait for it
            for (name, spec), tmp in zip({"a": spec_a, "b": spec_b}.items(), ray_tmp, strict=True):
                env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
                env.update(
                    MASKDM_CACHE=str(tmp_path / "cache"),
                    RAY_AUTH_MODE="disabled",
                    RAY_TMPDIR=str(tmp),
                    RAY_USAGE_STATS_ENABLED="0",
                    PYTHONUNBUFFERED="1",
                )
                with open(logs[name], "w") as log:
                    drivers[name] = subprocess.Popen(
                        [str(SWEEP), "run", str(spec), "--status-every", "10"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
            deadline = time.monotonic() + 240
            while _waiting_units(store.pretrain(key1), drivers) < 2:
                ended = {n: d.returncode for n, d in drivers.items() if d.poll() is not None}
                assert not ended, f"a driver ended while key1 was held: {ended}{context()}"
                assert time.monotonic() < deadline, f"the units of key1 did not both wait for it{context()}"
                time.sleep(0.2)
            assert store.pretrain(key2).finished(), f"sweep A had not trained key2 before key1{context()}"
            time.sleep(1.0)  # a unit that has just asked is at the lock by now
        for name, driver in drivers.items():
            assert driver.wait(timeout=300) == 0, f"sweep {name} exited {driver.returncode}{context()}"
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGTERM)
                driver.wait(timeout=60)
        for tmp in ray_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    errors = [p for name in ("sweep-a", "sweep-b") for p in SweepDir(out, name).tune.rglob("error.txt")]
    assert not errors, f"Tune trials failed: {[str(p) for p in errors]}\n{_tail(errors[0])}"
    # both asked key1 at 40: trained once
    assert len(_pretrain_starts(out, key1)) == 1, _pretrain_starts(out, key1)
    # 40 (A) and 30 (B) of key2: one line, 40 steps in all, that keeps both; no branch
    trained = [(e["key"], e["from_step"], e["to_step"]) for e in _pretrain_starts(out, key2)]
    assert sum(end - start for _, start, end in trained) == 40, f"key2 trained as {trained}"
    assert not (store.pretrain(key2).path / BRANCHES_DIR).exists(), f"key2 trained as {trained}"
    assert store.pretrain(key2).milestone_steps() == [30, 40]
    assert not store.pretrain(key1).asked_files() and not store.pretrain(key2).asked_files(), "asks left behind"
    for name in ("sweep-a", "sweep-b"):
        trials = json.loads(SweepDir(out, name).plan_file.read_text())["trials"]
        assert all(SweepDir(out, name).finetune(t["trial_id"]).finished() for t in trials), name
