"""``maskdm-sweep resume`` after the driver was killed with SIGKILL mid-run: nothing of the dead run keeps going,
every trial finishes, no stage run finishes twice or starts again after finishing, interrupted stage runs
continue from their newest checkpoint instead of starting over, and MLflow holds one run per stage run with an
unbroken curve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import CHECKPOINTS_DIR, MLFLOW_DB, StageRun, SweepDir
from maskdm_sweeps.testing import tiny_sweep_spec

BIN = Path(sys.executable).parent
SWEEP = BIN / "maskdm-sweep"


def _spec(name: str, output_dir: Path) -> str:
    # More work than the cluster smoke spec, so that the run is still busy when it is killed. The plan order puts a
    # short and a long fine-tuning side by side (two CPUs, one per trial): when the short one finishes, the long one
    # is part-way.
    axes = {"mask.rate": [0.25, 0.5], "finetune.steps": [40, 120]}
    return yaml.safe_dump(
        tiny_sweep_spec(
            name,
            output_dir,
            {"axes": axes},
            pretrain={"batch_size": 16},
            finetune={"batch_size": 16},
            runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
        )
    )


CKPT = re.compile(r"^step_(\d+)\.pt$")

pytestmark = pytest.mark.slow


def _env(cache: Path, ray_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    # RAY_TMPDIR: this run's local Ray keeps its session (and sockets, < 107 bytes) apart from other Ray users'.
    env.update(
        MASKDM_CACHE=str(cache),
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TMPDIR=str(ray_tmp),
        PYTHONUNBUFFERED="1",
    )
    return env


def _tail(path: Path, n: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as err:
        return f"<{path}: {err}>"


def _events(path: Path) -> list[dict]:
    """Whole lines only: a line being appended right now is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has stopped running; only its exit status is left for a parent to collect
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def _ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` still is a process of this test's Ray session (pids are reused)."""
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return False


# Ray's per-node agents are not fate-shared with the driver: they notice that their raylet is gone and exit about
# 60 s later (measured: 60-62 s after a SIGKILLed `ray.init()` driver, also with plain Ray and no sweep).
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _session_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment holds ``marker`` (what one run's Ray started): pid -> command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if (
            proc.name.isdigit()
            and int(proc.name) != os.getpid()
            and _alive(int(proc.name))
            and _ours(int(proc.name), marker)
        ):
            try:
                cmd = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found[int(proc.name)] = cmd.strip()[:150]
    return found


def _kill_session(marker: str) -> None:
    for pid in _session_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _newest_checkpoint(directory: Path) -> int:
    steps = [int(m.group(1)) for p in directory.glob("step_*.pt") if (m := CKPT.match(p.name))]
    return max(steps, default=0)


def _checkpoints(sweep: SweepDir, stage: str, key: str) -> Path:
    return (sweep.pretrain(key) if stage == "pretrain" else sweep.finetune(key)).checkpoints


def test_resume_after_the_driver_is_killed_continues_and_runs_nothing_twice(tmp_path):
    name = "resume-smoke"
    spec = tmp_path / "spec.yaml"
    out_dir = tmp_path / "out"
    spec.write_text(_spec(name, out_dir))
    sweep = SweepDir(out_dir, name)
    sweep_dir, events_path = sweep.path, sweep.events
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    env = _env(tmp_path / "cache", ray_tmp)
    # Every process of a run inherits its driver's environment: this tells the killed run's processes apart from
    # the resume's (and from anyone else's Ray).
    token = uuid.uuid4().hex
    first_env, resume_env = {**env, "MASKDM_TEST_RUN": f"{token}-first"}, {**env, "MASKDM_TEST_RUN": f"{token}-resume"}
    marker, resume_marker = f"MASKDM_TEST_RUN={token}-first", f"MASKDM_TEST_RUN={token}-resume"
    first_log, resume_log = tmp_path / "run.log", tmp_path / "resume.log"
    driver = None
    worker_pids: set[int] = set()

    def context() -> str:
        return (
            f"\nevents:\n{_tail(events_path)}\n--- first run output tail:\n{_tail(first_log, 4000)}"
            f"\n--- resume output tail:\n{_tail(resume_log, 4000)}"
        )

    try:
        # 1. Run until one fine-tuning finished and another is part-way (a checkpoint on disk, >= 10 steps to go).
        with open(first_log, "w") as log:
            driver = subprocess.Popen(
                [str(SWEEP), "run", str(spec), "--set", f"output_dir={out_dir}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=first_env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 420
        planned: dict[str, int] = {}
        while True:
            if not planned and sweep.plan_file.exists():
                try:
                    planned = {
                        t["trial_id"]: t["assignments"]["finetune.steps"]
                        for t in json.loads(sweep.plan_file.read_text())["trials"]
                    }
                except json.JSONDecodeError:  # being written
                    pass
            events = _events(events_path)
            done = {(e["stage"], e["key"]) for e in events if e["event"] == "stage_done"}
            running = {(e["stage"], e["key"]) for e in events if e["event"] == "stage_start"} - done
            part_way = [
                k
                for k in running
                if k[0] == "finetune"
                and k[1] in planned
                and 0 < _newest_checkpoint(_checkpoints(sweep, *k)) <= planned[k[1]] - 10
            ]
            if any(stage == "finetune" for stage, _ in done) and part_way:
                break
            assert driver.poll() is None, (
                f"the first run ended (exit {driver.returncode}) before it could be killed mid-fine-tuning: give "
                f"the spec more steps{context()}"
            )
            assert time.monotonic() < deadline, f"no finished + part-way fine-tuning within 420 s{context()}"
            time.sleep(0.2)

        running_pids = {e["pid"] for e in events if e["event"] == "stage_start" and (e["stage"], e["key"]) in running}
        assert any(_alive(p) and _ours(p, marker) for p in running_pids), (
            f"no live trial process among {running_pids} carries {marker}: the liveness check below cannot work"
        )
        at_kill = {k: _newest_checkpoint(_checkpoints(sweep, *k)) for k in part_way}
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: Ray's processes must die with it
        killed_at = time.monotonic()
        driver.wait(timeout=30)
        worker_pids = {e["pid"] for e in _events(events_path) if e["event"] == "stage_start"}
        assert worker_pids, f"stage_start events carry no pid{context()}"

        # 2. Nothing of the killed run keeps running or writing: its trial processes, raylet, GCS and workers die
        # with the driver (Ray's agents a minute later: checked after the resume). How many steps a trial process
        # still trains before it notices is up to the machine's speed: not asserted. (Timeouts: liveness only.)
        deadline = time.monotonic() + 120
        while (left := [p for p in worker_pids if _alive(p) and _ours(p, marker)]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, f"trial processes {left} of the killed run still live 120 s after the driver died{context()}"
        print(f"trial processes of the killed run gone {time.monotonic() - killed_at:.1f} s after the driver's SIGKILL")

        def core() -> dict[int, str]:
            return {p: c for p, c in _session_processes(marker).items() if not c.startswith(RAY_AGENTS)}

        while (rest := core()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not rest, f"processes of the killed run's Ray are alive 120 s after the driver died: {rest}{context()}"
        print(
            f"the killed run's Ray processes (but its agents) gone {time.monotonic() - killed_at:.1f} s after the "
            "driver's SIGKILL"
        )
        time.sleep(3)
        size = events_path.stat().st_size
        ckpts = sorted(str(p) for p in out_dir.rglob("step_*.pt"))
        time.sleep(10)
        assert events_path.stat().st_size == size, f"the killed run still appends events{context()}"
        assert sorted(str(p) for p in out_dir.rglob("step_*.pt")) == ckpts, "the killed run still writes checkpoints"

        # What the dead run left, read once all of it is gone (whatever its processes did after the kill counts):
        # started stage runs, which of them finished, the newest checkpoint of the others.
        first_events = _events(events_path)
        assert not any(e["event"] == "invocation" and e.get("resume") for e in first_events)
        done_before = {(e["stage"], e["key"]) for e in first_events if e["event"] == "stage_done"}
        started_before = {(e["stage"], e["key"]) for e in first_events if e["event"] == "stage_start"}
        interrupted = {k: _newest_checkpoint(_checkpoints(sweep, *k)) for k in started_before - done_before}
        print(
            f"killed part-way (stage, key) -> newest checkpoint step: at the kill {at_kill}, after {interrupted}; "
            f"finished by the dying run: {sorted(set(at_kill) & done_before)}"
        )
        for key, step in at_kill.items():
            # checkpoints are never lost: the newest one is at least the one on disk at the kill (or the stage
            # run finished before its process died; resume must not train it again: checked below)
            assert key in done_before or interrupted[key] >= step, (
                f"{key}: newest checkpoint step {step} at the kill, {interrupted[key]} once the run was dead{context()}"
            )

        # 3. Resume.
        with open(resume_log, "w") as log:
            resumer = subprocess.Popen(
                [str(SWEEP), "resume", str(sweep_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=resume_env,
                start_new_session=True,
            )
            try:
                code = resumer.wait(timeout=420)
            except subprocess.TimeoutExpired:
                os.killpg(resumer.pid, signal.SIGKILL)
                resumer.wait(timeout=30)
                code = None
        assert code == 0, f"maskdm-sweep resume exited with {code}{context()}"

        # 4. Every planned trial finished.
        plan = json.loads(sweep.plan_file.read_text())
        trial_ids = {t["trial_id"] for t in plan["trials"]}
        pretrain_keys = set(plan["pretrains"])
        assert len(trial_ids) == 4 and len(pretrain_keys) == 2, plan
        missing = [t for t in trial_ids if not sweep.finetune(t).result.exists()]
        assert not missing, f"trials without finetune/result.json after resume: {missing}{context()}"

        # 5. None run twice: one stage_done per stage run, no start after its done.
        events = _events(events_path)
        invocations = [i for i, e in enumerate(events) if e["event"] == "invocation"]
        assert len(invocations) == 2 and events[invocations[1]].get("resume") is True, (
            f"expected the run and one resume invocation{context()}"
        )
        done_count = Counter((e["stage"], e["key"]) for e in events if e["event"] == "stage_done")
        expected = Counter({("finetune", t): 1 for t in trial_ids} | {("pretrain", k): 1 for k in pretrain_keys})
        assert done_count == expected, f"each stage run must finish exactly once: {dict(done_count)}{context()}"
        done_at = {(e["stage"], e["key"]): i for i, e in enumerate(events) if e["event"] == "stage_done"}
        restarted = [
            (i, e)
            for i, e in enumerate(events)
            if e["event"] == "stage_start" and i > done_at.get((e["stage"], e["key"]), len(events))
        ]
        assert not restarted, f"stage runs started again after they had finished: {restarted}{context()}"
        steps = {e["key"]: e["steps"] for e in events if e["event"] == "stage_done" and e["stage"] == "finetune"}
        planned = {t["trial_id"]: t["assignments"]["finetune.steps"] for t in plan["trials"]}
        assert steps == planned, f"fine-tunings stopped at the wrong step: {steps} vs planned {planned}"

        # 6. Interrupted stage runs continue from the newest checkpoint they wrote instead of starting over (one
        # without a checkpoint from step 0).
        resumed_starts = [e for e in events[invocations[1] :] if e["event"] == "stage_start"]
        for key, newest in interrupted.items():
            starts = [e for e in resumed_starts if (e["stage"], e["key"]) == key]
            assert starts, f"interrupted stage run {key} was not started again by resume{context()}"
            bad = [e["from_step"] for e in starts if e["from_step"] != newest]
            assert not bad, (
                f"{key} had checkpoints up to step {newest} when the killed run was gone, but resume "
                f"started it from step(s) {bad}{context()}"
            )
        print("resumed from a checkpoint (stage, key) -> step:", {k: s for k, s in interrupted.items() if s})
        for e in resumed_starts:
            key = (e["stage"], e["key"])
            assert key not in done_before, f"resume started a finished stage run: {e}{context()}"
            if key not in started_before:
                assert e["from_step"] == 0, f"a stage run that never ran resumed from a checkpoint: {e}{context()}"

        # 7. MLflow: one parent run per invocation, exactly one child run per stage run (re-attached, not
        # duplicated), finished, with a continuous train/loss curve (every logged step, none missing, none trained
        # twice).
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{(out_dir / MLFLOW_DB).resolve()}")
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
        parents = {r.info.run_id for r in runs if r.data.tags.get("kind") == "sweep"}
        assert len(parents) == 2, f"expected one parent run per invocation: {len(parents)}"
        # the killed driver's parent was left RUNNING; the resume marked it KILLED and finished its own
        statuses = [
            r.info.status
            for r in sorted((r for r in runs if r.info.run_id in parents), key=lambda r: r.info.start_time)
        ]
        assert statuses == ["KILLED", "FINISHED"], statuses
        children = [r for r in runs if r.info.run_id not in parents]
        assert all(r.data.tags.get("mlflow.parentRunId") in parents for r in children)
        per_stage_run = Counter(
            (
                r.data.tags["stage"],
                r.data.tags["trial_id"] if r.data.tags["stage"] == "finetune" else r.data.tags["pretrain_key"],
            )
            for r in children
        )
        assert per_stage_run == expected, f"one MLflow run per stage run: {dict(per_stage_run)}"
        for run in children:
            stage, tags = run.data.tags["stage"], run.data.tags
            key = (stage, tags["trial_id"] if stage == "finetune" else tags["pretrain_key"])
            total = 40 if stage == "pretrain" else planned[tags["trial_id"]]
            history = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
            logged = sorted(history)
            assert run.info.status == "FINISHED" and logged == list(range(5, total + 1, 5)), (
                f"{run.info.run_name}: status {run.info.status}, train/loss at steps {logged}"
            )
            # nothing trained twice: a step is logged again only past the checkpoint its stage run resumed from
            # (the killed run may have logged it before it could write the next checkpoint)
            again = sorted(step for step, n in history.items() if n > 1)
            assert all(step > interrupted.get(key, total) for step in again) and max(history.values()) <= 2, (
                f"{run.info.run_name}: train/loss logged more than once at steps {again} (resumed from step "
                f"{interrupted.get(key)})"
            )

        # 8. By now (the resume took a while) Ray's agents of the killed session have gone too.
        deadline = killed_at + 240
        while (rest := _session_processes(marker)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not rest, f"processes of the killed run are alive {time.monotonic() - killed_at:.0f} s after: {rest}"
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        # leftovers of this test's runs only (their environment carries this test's token): on failure, or what
        # the finished resume's Ray is still shutting down
        _kill_session(marker)
        _kill_session(resume_marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _shared_spec(name: str, output_dir: Path) -> str:
    """One pre-training run that serves two lengths, 30 and 400 steps."""
    return yaml.safe_dump(
        tiny_sweep_spec(
            name,
            output_dir,
            {"axes": {"pretrain.steps": [30, 400]}},
            pretrain={"steps": 30, "batch_size": 16},
            finetune={"steps": 20, "batch_size": 16},
            runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
        )
    )


def test_a_driver_killed_during_a_shared_pretraining_resumes_it_with_its_milestones_intact(tmp_path):
    """One pre-training run serves 30 and 400 steps; the driver dies after the 30-step milestone was kept."""
    name = "shared-kill"
    spec = tmp_path / "spec.yaml"
    out_dir, sweep = tmp_path / "out", SweepDir(tmp_path / "out", name)
    spec.write_text(_shared_spec(name, out_dir))
    sweep_dir, events_path = sweep.path, sweep.events
    env = _env(tmp_path / "cache", Path(tempfile.mkdtemp(prefix="rt", dir="/tmp")))
    token = uuid.uuid4().hex
    marker = f"MASKDM_TEST_RUN={token}-first"
    first_log, resume_log = tmp_path / "run.log", tmp_path / "resume.log"

    def context() -> str:
        return (
            f"\nevents:\n{_tail(events_path)}\n--- first run:\n{_tail(first_log, 3000)}"
            f"\n--- resume:\n{_tail(resume_log, 3000)}"
        )

    with open(first_log, "w") as log:
        driver = subprocess.Popen(
            [str(SWEEP), "run", str(spec), "--set", f"output_dir={out_dir}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "MASKDM_TEST_RUN": f"{token}-first"},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 420
        while True:
            lines = [StageRun(d.parent) for d in sweep.store.glob(f"*/{CHECKPOINTS_DIR}")]
            if lines and 40 <= _newest_checkpoint(lines[0].checkpoints) <= 300:
                break
            assert driver.poll() is None, f"the run ended before it could be killed{context()}"
            assert time.monotonic() < deadline, f"the pre-training did not pass step 40 within 420 s{context()}"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 120
        while _session_processes(marker) and time.monotonic() < deadline:
            time.sleep(1)
        _kill_session(marker)  # Ray's agents linger a minute: not what this test is about
        line = lines[0]
        key = line.path.name
        kept = line.milestone(30)
        assert kept.exists() and line.milestone_info(30).exists(), context()
        kept_stat = kept.stat()
        newest = _newest_checkpoint(line.checkpoints)
        before = _events(events_path)
        assert not any(e["event"] == "stage_start" and e["stage"] == "finetune" for e in before), (
            "a fine-tuning started before the pre-training phase ended"
        )

        with open(resume_log, "w") as log:
            resumer = subprocess.run(
                [str(SWEEP), "resume", str(sweep_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, "MASKDM_TEST_RUN": f"{token}-resume"},
                timeout=600,
            )
        assert resumer.returncode == 0, context()

        # every trial finished, each from its own length
        plan = json.loads(sweep.plan_file.read_text())
        assert list(plan["pretrains"]) == [key] and len(plan["trials"]) == 2
        for trial in plan["trials"]:
            result = json.loads(sweep.finetune(trial["trial_id"]).result.read_text())
            assert result["steps"] == 20
            config = json.loads(sweep.finetune(trial["trial_id"]).config.read_text())
            assert config["pretrain"]["steps"] == trial["pretrain_steps"]
        # the pre-training resumed from its newest checkpoint, its kept 30-step state untouched, nothing twice
        events = _events(events_path)
        resumed = [e for e in events[len(before) :] if e["event"] == "stage_start" and e["stage"] == "pretrain"]
        assert [(e["key"], e["from_step"], e["milestones"]) for e in resumed] == [(key, newest, [400])], context()
        assert kept.stat().st_ino == kept_stat.st_ino and kept.stat().st_mtime == kept_stat.st_mtime
        done = Counter((e["stage"], e["key"]) for e in events if e["event"] == "stage_done")
        assert done == Counter({("pretrain", key): 1, **{("finetune", t["trial_id"]): 1 for t in plan["trials"]}})
        assert sorted(p.name for p in line.milestones.glob("*.pt")) == [f"step_{30:09d}.pt", f"step_{400:09d}.pt"]

        # one MLflow child run per stage run: the pre-training line (re-attached, not duplicated) and two fine-tunings
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{(out_dir / MLFLOW_DB).resolve()}")
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
        children = [r for r in runs if r.data.tags.get("kind") != "sweep"]
        assert Counter(r.data.tags["stage"] for r in children) == Counter({"pretrain": 1, "finetune": 2})
        (pre_run,) = [r for r in children if r.data.tags["stage"] == "pretrain"]
        history = Counter(m.step for m in client.get_metric_history(pre_run.info.run_id, "train/loss"))
        assert sorted(history) == list(range(5, 401, 5))
        assert all(step > newest for step, n in history.items() if n > 1), "steps before the resume point trained twice"
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_session(marker)
