"""Seeds until decided on real Ray sweeps (tiny, CPU): a round adds exactly the seeds the rule asks for, the budget
holds, an arm clearly behind stops and continues from its checkpoint when the budget is raised, MLflow keeps one child
run per stage run across the rounds, and a driver killed between rounds resumes them without retraining."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from maskdm_sweeps.files import read_json
from maskdm_sweeps.layout import SweepDir
from maskdm_sweeps.sweep import run_sweep
from maskdm_sweeps.sweep.rounds import RoundsState, continue_stopped, design_cost, group_of
from maskdm_sweeps.sweepspec.expand import load_spec
from maskdm_sweeps.testing import tiny_sweep_spec

SWEEP = Path(sys.executable).parent / "maskdm-sweep"
EVAL = {
    "num_samples": 32,
    "batch_size": 32,
    "every_steps": 10,
    "sampler": "ddim",
    "sampling_steps": 5,
    "backend": "digits-classifier",
}


def write_spec(tmp_path: Path, name: str, sweep: dict, **base) -> Path:
    """A tiny adaptive spec: one mask rate against an equal-compute baseline, FID every 10 steps."""
    evaluation = {**EVAL, **base.pop("eval", {})}
    axes = {"axes": {"mask.rate": [0.5]}, "baseline": "equal_compute", **sweep}
    spec = tiny_sweep_spec(name, tmp_path / "results", axes, resources={"cpus": 0.5}, eval=evaluation, **base)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def events(sweep: SweepDir) -> list[dict]:
    return [json.loads(line) for line in sweep.events.read_text().splitlines() if line.strip()]


def trained_twice(sweep: SweepDir) -> list[tuple[str, str]]:
    done = [(e["stage"], e["key"]) for e in events(sweep) if e["event"] == "stage_done"]
    return sorted({k for k in done if done.count(k) > 1})


def expected_next(state_seeds: dict[str, int], looks: list[dict], groups: dict[str, str], max_seeds: int) -> dict:
    """The rule, written again: every open arm below max gets one seed, its baseline one when it limits."""
    seeds = dict(state_seeds)
    for row in looks:
        if row["verdict"] != "open":
            continue
        arm, base = groups[row["trial_ids"][0]], groups[row["baseline_ids"][0]]
        if seeds[arm] < max_seeds:
            seeds[arm] += 1
            if row["baseline_limits"] and seeds[base] < max_seeds and seeds[base] == state_seeds[base]:
                seeds[base] += 1
    return seeds


@pytest.fixture(scope="module")
def rounds_sweep(tmp_path_factory, ray_session):
    """Seeds 2..3 with no futility stop (open verdicts get seeds) and a budget, run in-process with MLflow."""
    tmp = tmp_path_factory.mktemp("rounds")
    path = write_spec(tmp, "rounds", {"seeds": {"min": 2, "max": 3, "futility": 0}, "budget": {"tflops": 1.0}})
    plan = load_spec(path)
    outcome = run_sweep(plan)
    assert outcome.exit_code == 0, outcome.failed
    return plan


@pytest.mark.slow
def test_each_round_adds_exactly_the_seeds_the_rule_asks_for_and_nothing_else(rounds_sweep):
    plan = rounds_sweep
    state = read_json(plan.layout.rounds)
    groups = {t.trial_id: group_of(t) for t in plan.trials}
    assert state["rounds"], "no round was recorded"
    seeds = dict.fromkeys(set(groups.values()), 2)
    for record in state["rounds"]:
        assert record["seeds"] == seeds  # the round ran the design the previous decision made
        nxt = expected_next(seeds, record["looks"], groups, 3)
        assert {g: n - seeds[g] for g, n in nxt.items() if n != seeds[g]} == record["added"]
        seeds = nxt
    assert state["seeds"] == seeds
    # on disk: exactly the trials of the final design, each trained once
    design = {t.trial_id for t in plan.trials if t.config.seed < seeds[group_of(t)]}
    on_disk = {p.name for p in (plan.sweep_dir / "trials").iterdir() if p.is_dir()}
    assert on_disk == design
    assert all(plan.trial_finished(t) for t in design)
    assert trained_twice(plan.layout) == []


@pytest.mark.slow
def test_the_design_never_costs_more_than_the_budget(rounds_sweep, tmp_path):
    plan = rounds_sweep
    state = RoundsState.load_or_start(plan)
    assert state.cost(plan) <= plan.spec.sweep.budget.tflops
    # a budget between the first round's cost and the next seed's: the rounds end on the budget, within it
    first = design_cost(plan, state.design(plan, dict.fromkeys(state.seeds, 2)), "tflops")
    one_more = design_cost(plan, state.design(plan, {g: 3 if "mask" in g else 2 for g in state.seeds}), "tflops")
    assert one_more > first
    budget = (first + one_more) / 2
    path = write_spec(tmp_path, "tight", {"seeds": {"min": 2, "max": 3, "futility": 0}, "budget": {"tflops": budget}})
    tight = load_spec(path)
    assert run_sweep(tight, track=False).exit_code == 0
    after = RoundsState.load_or_start(tight)
    assert after.cost(tight) <= budget
    opened = [r for r in after.rounds[-1]["looks"] if r["verdict"] == "open"]
    if opened:  # the only way on was past the budget: the report must say those verdicts stayed open
        assert after.ended == "budget" and after.rounds[-1]["left_open_by_budget"]


@pytest.mark.slow
def test_mlflow_holds_one_child_run_per_stage_run_across_rounds(rounds_sweep):
    plan = rounds_sweep
    client = MlflowClient(f"sqlite:///{Path(plan.spec.output_dir) / 'mlflow.db'}")
    exp = client.get_experiment_by_name(plan.spec.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("kind") != "sweep"]
    per_stage = [
        (
            r.data.tags.get("stage"),
            r.data.tags.get("trial_id") if r.data.tags.get("stage") == "finetune" else r.data.tags.get("pretrain_key"),
        )
        for r in children
    ]
    assert len(per_stage) == len(set(per_stage))
    finetunes = {tid for stage, tid in per_stage if stage == "finetune"}
    assert finetunes == {p.name for p in (plan.sweep_dir / "trials").iterdir() if p.is_dir()}


def _points(plan, fids: dict[int, list[float]], steps=(10, 20, 30, 40)):
    """FID points of the plan's finished seeds 0..1: ``fids[seed]`` per step for the baseline; tflops exact."""
    from maskdm_sweeps.sweep.behind import training_tflops_at

    rows = []
    for t in plan.trials:
        if t.is_baseline and t.config.seed in fids:
            for step, fid in zip(steps, fids[t.config.seed], strict=True):
                rows.append({"trial_id": t.trial_id, "step": step, "fid": fid, "tflops": training_tflops_at(t, step)})
    return pd.DataFrame(rows)


def test_an_arm_clearly_behind_is_stopped_on_all_its_seeds_and_continues_when_the_budget_is_raised(tmp_path):
    """The stopper of a round, fed Tune's result dicts as the trials report them (no Ray needed): it stops an arm
    only when every seed has the evaluation, every seed is worse than every baseline seed at equal compute, and by
    more than twice the noise; the stop is recorded with its budget, and a raised budget continues the arm."""
    from maskdm_sweeps.sweep.behind import BehindStopper

    path = write_spec(
        tmp_path,
        "behind",
        {"seeds": {"min": 2, "max": 2}, "stop_behind": True, "budget": {"tflops": 1.0}},
        pretrain={"steps": 10, "batch_size": 8},
        finetune={"steps": 40, "batch_size": 8},
    )
    plan = load_spec(path)
    state = RoundsState.load_or_start(plan)
    design = state.design(plan)
    arm = [t for t in design if not t.is_baseline]
    # baseline FIDs fall 100 -> 70 over its steps; the arm's compute at its step 10 falls inside the baseline's curve
    points = _points(plan, {0: [100, 90, 80, 70], 1: [102, 92, 82, 72]}, steps=(10, 40, 80, 120))

    def result(t, step, fid):
        return {"maskdm_trial": t.trial_id, "stage": "finetune", "step": step, "eval/step": step, "eval/fid": fid}

    stopper = BehindStopper(plan, state, design, points, noise_std=1.0, round_number=1)
    assert not stopper(arm[0].trial_id, result(arm[0], 10, 200.0))  # one seed's value never stops an arm
    # both seeds worse than every baseline seed: decided now, each trial stopped at its first report after the rung
    # (when the rung's checkpoint is on disk)
    assert not stopper(arm[1].trial_id, result(arm[1], 10, 190.0))
    assert stopper(arm[1].trial_id, {**result(arm[1], 11, 190.0), "eval/step": 10})
    assert stopper(arm[0].trial_id, {**result(arm[0], 12, 200.0), "eval/step": 10})  # its other seed follows
    [(group, stop)] = state.active_stops().items()
    assert stop["budget"] == 1.0 and stop["step"] == 10 and set(stop["steps"]) == {t.trial_id for t in arm}
    assert all(plan.layout.finetune(t.trial_id).stopped_behind.exists() for t in arm)
    assert read_json(plan.layout.rounds)["stopped"][group]["step"] == 10  # saved at once (a kill keeps it)
    assert {t.trial_id for t in state.runnable(plan)} == {t.trial_id for t in design if t.is_baseline}

    # close to the baseline (within twice the noise) or overlapping seeds: not stopped
    for fids, noise in (([85.0, 84.0], 5.0), ([95.0, 84.0], 0.0)):
        fresh = RoundsState(dict.fromkeys(state.seeds, 2))
        other = BehindStopper(plan, fresh, design, points, noise_std=noise, round_number=1)
        assert not other(arm[0].trial_id, result(arm[0], 10, fids[0]))
        assert not other(arm[1].trial_id, result(arm[1], 10, fids[1]))

    # the same budget keeps it paused; a raised one continues it (markers gone, exempt from stopping again)
    assert continue_stopped(plan, state) == []
    raised = load_spec(path, overrides=["sweep.budget.tflops=2.0"])
    assert raised.spec_hash == plan.spec_hash  # the budget is not part of the sweep's identity
    assert continue_stopped(raised, state) == [group]
    assert not any(raised.layout.finetune(t.trial_id).stopped_behind.exists() for t in arm)
    assert {t.trial_id for t in state.runnable(raised)} == {t.trial_id for t in design}
    again = BehindStopper(raised, state, design, points, noise_std=1.0, round_number=2)
    again(arm[0].trial_id, result(arm[0], 20, 200.0))
    assert not again(arm[1].trial_id, result(arm[1], 20, 200.0))
    assert not again(arm[1].trial_id, {**result(arm[1], 21, 200.0), "eval/step": 20})


@pytest.mark.slow
def test_an_arm_behind_in_a_real_sweep_stops_and_resumes_from_its_checkpoint_when_the_budget_is_raised(
    tmp_path, ray_session
):
    # the arm's pre-training learns nothing (lr 1e-9) yet costs 600 steps: at equal compute the baseline (U-ViT of
    # the quickstart, FID 220 -> 130 over its 512 steps) has trained about 7x longer at the arm's first evaluation
    path = write_spec(
        tmp_path,
        "behind",
        {"seeds": {"min": 2, "max": 2}, "stop_behind": True, "budget": {"tflops": 3.0}},
        model={"preset": "uvit-digits"},
        diffusion={"schedule": "cosine"},
        pretrain={"steps": 600, "batch_size": 32, "lr": 1e-9, "warmup_steps": 0},
        finetune={"steps": 200, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20, "betas": [0.9, 0.999]},
        eval={"num_samples": 200, "batch_size": 200, "every_steps": 50, "sampling_steps": 10},
        runtime={"device": "cpu", "log_every_steps": 10, "checkpoint_every_steps": 50},
    )
    plan = load_spec(path)
    assert run_sweep(plan, track=False).exit_code == 0
    state = RoundsState.load_or_start(plan)
    [(group, stop)] = state.active_stops().items()
    arm = [t for t in plan.trials if group_of(t) == group]
    assert stop["step"] < arm[0].config.finetune.steps and stop["budget"] == 3.0
    for t in arm:
        assert not plan.trial_finished(t.trial_id) and plan.layout.finetune(t.trial_id).stopped_behind.exists()
    assert "slower (stopped at" in plan.layout.report.read_text()
    n_events = len(events(plan.layout))

    raised = load_spec(path, overrides=["sweep.budget.tflops=4.0"])
    assert run_sweep(raised, track=False).exit_code == 0
    later = events(plan.layout)[n_events:]
    starts = {e["key"]: e["from_step"] for e in later if e["event"] == "stage_start"}
    assert set(starts) == {t.trial_id for t in arm}  # nothing else ran again: no pre-training, no baseline
    for t in arm:
        assert starts[t.trial_id] >= stop["step"]  # from its checkpoint at the rung (or later), not from scratch
        assert plan.trial_finished(t.trial_id) and not plan.layout.finetune(t.trial_id).stopped_behind.exists()


@pytest.mark.slow
def test_a_driver_killed_between_rounds_resumes_the_rounds_without_retraining(tmp_path):
    path = write_spec(tmp_path, "killed", {"seeds": {"min": 2, "max": 3, "futility": 0}})
    sweep = SweepDir(tmp_path / "results", "killed")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MASKDM_CACHE": str(tmp_path / "cache")}
    log = open(tmp_path / "run.log", "w")
    driver = subprocess.Popen(
        [str(SWEEP), "run", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not (read_json(sweep.rounds) or {}).get("rounds"):
        assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no round finished within 600 s"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    first = read_json(sweep.rounds)
    out = subprocess.run([str(SWEEP), "resume", str(sweep.path)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    final = read_json(sweep.rounds)
    assert [r["round"] for r in final["rounds"]] == list(range(1, len(final["rounds"]) + 1))
    assert final["rounds"][0] == first["rounds"][0]  # the round before the kill is kept as it was
    assert final["ended"] is not None
    assert trained_twice(sweep) == []
