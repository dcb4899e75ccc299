"""An adaptive sweep's rounds in the report, the summary lines, the parent run and ``plan``: from a ``rounds.json``
written by hand beside a fake finished sweep (no Ray, no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fake_sweep import build_sweep
from maskdm_sweeps.layout import SweepDir
from maskdm_sweeps.results import load
from maskdm_sweeps.results.adaptive_report import rounds_answer, rounds_json, seeds_not_asked, summary_lines
from maskdm_sweeps.results.report import render_report
from maskdm_sweeps.results.verdicts import seed_group

ARM, SLOW = '{"mask.rate": 0.5}', '{"mask.rate": 0.9}'
BASE = '{"baseline": true}'


def _adaptive_spec(layout: SweepDir, budget: dict | None = None) -> None:
    """Turn the fake sweep's resolved spec into an adaptive one's (seeds 2..4, a budget)."""
    text = layout.resolved_spec.read_text()
    spec = yaml.safe_load(text)
    spec["sweep"]["seeds"] = {"min": 2, "max": 4, "until": "decided"}
    spec["sweep"]["budget"] = budget
    spec["report"] = {"target_fid": None, "confidence": 0.9}
    layout.resolved_spec.write_text(yaml.safe_dump(spec, sort_keys=False))


def _ids(written: dict, rate: float | None, seeds: int) -> list[str]:
    return sorted(t for t, w in written["trials"].items() if w["rate"] == rate and w["seed"] < seeds)


def _look(written: dict, arm: str, rate: float, n: int, verdict: str, **numbers: float) -> dict[str, Any]:
    row = {
        "arm": arm,
        "target_fid": 61.7,
        "n_seeds": n,
        "n_baseline_seeds": n,
        "speedup": 1.8,
        "low": 1.2,
        "high": 2.7,
        "alpha": 0.0225,
        "verdict": verdict,
        "conditional_power": 0.9,
        "baseline_limits": False,
    }
    return {**row, **numbers, "trial_ids": _ids(written, rate, n), "baseline_ids": _ids(written, None, n)}


def _round(number: int, seeds: dict, looks: list, added: dict, left: list | None = None, cost: float = 30.0):
    return {
        "round": number,
        "seeds": seeds,
        "looks": looks,
        "added": added,
        "left_open_by_budget": left or [],
        "stopped": [],
        "cost": {"tflops": cost, "device_hours": cost / 100},
        "fixed_cost": {"tflops": 80.0, "device_hours": 0.8},
    }


@pytest.fixture
def decided(tmp_path):
    """Two rounds: patch r=0.5 faster after 3 seeds (2 rounds), patch r=0.9 slower at its first look."""
    w = build_sweep(tmp_path, rates=(0.5, 0.9), seeds=(0, 1, 2), dup_step=False)
    layout = SweepDir(tmp_path, "fake")
    _adaptive_spec(layout)
    first = {ARM: 2, SLOW: 2, BASE: 2}
    rounds = [
        _round(1, first, [_look(w, "patch r=0.5", 0.5, 2, "open", low=0.8),
                          _look(w, "patch r=0.9", 0.9, 2, "slower", speedup=0.4, low=0.2, high=0.7)],
               {ARM: 1, BASE: 1}, cost=20.0),
        _round(2, {ARM: 3, SLOW: 2, BASE: 3}, [_look(w, "patch r=0.5", 0.5, 3, "faster"),
                                               _look(w, "patch r=0.9", 0.9, 2, "slower", speedup=0.4, low=0.2,
                                                     high=0.7, n_baseline_seeds=3)], {}),
    ]  # fmt: skip
    state = {"seeds": {ARM: 3, SLOW: 2, BASE: 3}, "rounds": rounds, "stopped": {}, "ended": "decided"}
    layout.rounds.write_text(json.dumps(state))
    return w, layout, state


def _report(layout: SweepDir) -> str:
    return render_report(layout.path, *load(layout.path))


def _row(report: str, arm: str) -> list[str]:
    section = report.split("## Seeds until decided")[1].split("\n## ")[0]
    line = next(line for line in section.splitlines() if line.startswith(f"| {arm} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_report_lists_each_arms_seeds_rounds_verdict_and_the_compute_against_the_fixed_design(decided):
    _, layout, _ = decided
    report = _report(layout)
    assert report.index("## Seeds until decided") < report.index("## Speed-up")
    section = report.split("## Seeds until decided")[1].split("\n## ")[0]
    # arm, target FID, seeds, baseline seeds, rounds, verdict, speed-up, interval, alpha spent
    assert _row(report, "patch r=0.5") == ["patch r=0.5", "61.70", "3", "3", "2", "faster", "1.8", "1.2x to 2.7x",
                                           "0.0225"]  # fmt: skip
    assert _row(report, "patch r=0.9")[2:6] == ["2", "3", "1", "slower"]
    assert "90% confidence" in section and "`sweep.seeds`: min 2, max 4" in section
    assert "docs/method.md#seeds-until-decided-sequential-verdicts" in section
    assert "30 TFLOPs" in section and "80 TFLOPs" in section and "38% of it" in section  # 30 / 80
    assert "every verdict is decided" in section
    assert "ran out" not in section and "still going" not in section


def test_the_summary_lines_and_the_parent_runs_metrics_and_tags(decided):
    _, layout, _ = decided
    load(layout.path)  # trials.parquet, as after a run
    share = "compute 38% of the fixed design"  # 30 of 80 TFLOPs
    assert summary_lines(layout.path) == [
        f"seeds until decided: patch r=0.5: faster after 3 seeds (baseline 3), 2 rounds; {share}",
        f"seeds until decided: patch r=0.9: slower after 2 seeds (baseline 3), 1 round; {share}",
    ]
    metrics, tags = rounds_answer(layout.path)
    assert metrics == {
        "rounds/patch r_0.5/seeds": 3.0,
        "rounds/patch r_0.5/baseline_seeds": 3.0,
        "rounds/patch r_0.9/seeds": 2.0,
        "rounds/patch r_0.9/baseline_seeds": 3.0,
        "rounds/compute_vs_fixed": pytest.approx(30 / 80),
    }
    assert tags == {"verdict/patch r_0.5": "faster", "verdict/patch r_0.9": "slower"}
    assert [a["verdict"] for a in rounds_json(layout.path)] == ["faster", "slower"]
    json.dumps(rounds_json(layout.path), allow_nan=False)  # plain JSON: no NaN


def test_a_sweep_without_rounds_has_no_section_and_no_lines(tmp_path):
    build_sweep(tmp_path, rates=(0.5,), seeds=(0, 1), dup_step=False)
    layout = SweepDir(tmp_path, "fake")
    assert "Seeds until decided" not in _report(layout)
    assert summary_lines(layout.path) == [] and rounds_answer(layout.path) == ({}, {})


def test_an_arm_stopped_as_behind_reads_slower_stopped_at_its_tflops(tmp_path):
    w = build_sweep(tmp_path, rates=(0.5, 0.9), seeds=(0, 1), no_result=((0.9, 0), (0.9, 1)), dup_step=False)
    layout = SweepDir(tmp_path, "fake")
    _adaptive_spec(layout, {"tflops": 100.0, "device_hours": None})
    stopped = _ids(w, 0.9, 2)
    for tid in stopped:
        layout.finetune(tid).stopped_behind.write_text(json.dumps({"step": 20, "tflops": 12.5, "round": 1}))
    seeds = {ARM: 2, SLOW: 2, BASE: 2}
    state = {
        "seeds": seeds,
        "rounds": [_round(1, seeds, [_look(w, "patch r=0.5", 0.5, 2, "faster")], {})],
        "stopped": {
            SLOW: {"round": 1, "step": 20, "tflops": 12.5, "budget": 100.0, "steps": dict.fromkeys(stopped, 20)}
        },
        "ended": "decided",
    }
    layout.rounds.write_text(json.dumps(state))
    trials, _ = load(layout.path)
    assert set(trials.loc[trials["trial_id"].isin(stopped), "status"]) == {"stopped"}
    report = _report(layout)
    row = _row(report, "patch r=0.9")
    assert row[2:6] == ["2", "2", "1", "slower (stopped at 12.5 TFLOPs)"]
    assert "a `run` with a larger `sweep.budget` continues them" in report
    assert (
        "seeds until decided: patch r=0.9: slower (stopped at 12.5 TFLOPs) after 2 seeds"
        in summary_lines(layout.path)[1]
    )
    assert rounds_answer(layout.path)[1]["verdict/patch r_0.9"] == "slower (stopped at 12.5 TFLOPs)"
    state["stopped"][SLOW]["continued"] = True  # a raised budget continued it: no longer reported as stopped
    layout.rounds.write_text(json.dumps(state))
    assert "stopped at" not in _report(layout)


def test_a_budget_that_ran_out_names_the_verdicts_still_open(decided):
    _, layout, state = decided
    _adaptive_spec(layout, {"tflops": 40.0, "device_hours": None})
    state["rounds"][-1]["looks"][0]["verdict"] = "open"
    state["rounds"][-1]["left_open_by_budget"] = ["patch r=0.5"]
    state["ended"] = "budget"
    layout.rounds.write_text(json.dumps(state))
    section = _report(layout).split("## Seeds until decided")[1].split("\n## ")[0]
    assert "The budget (`sweep.budget.tflops`: 40) ran out with 1 verdict still open: patch r=0.5." in section
    assert "Raise `sweep.budget` and `run` the spec again" in section
    state["rounds"][-1]["left_open_by_budget"] = []  # ended by the budget, its list lost: the open looks are named
    layout.rounds.write_text(json.dumps(state))
    assert "1 verdict still open: patch r=0.5." in _report(layout)


def test_rounds_still_going_say_resume_continues_them_and_unasked_seeds_are_not_missing(decided):
    _, layout, state = decided
    state["ended"] = None
    layout.rounds.write_text(json.dumps(state))
    plan = json.loads(layout.plan_file.read_text())  # the plan holds seeds up to max: seed 3 of each arm
    plan["trials"].append({"trial_id": "t-seed3", "label": "mask.rate=0.5 seed=3",
                           "assignments": {"mask.rate": 0.5, "seed": 3}, "pretrain_key": None})  # fmt: skip
    layout.plan_file.write_text(json.dumps(plan))
    report = _report(layout)
    assert f"`maskdm-sweep resume {layout.path}` continues them" in report
    assert "t-seed3" in seeds_not_asked(layout.path) and "never started" not in report
    state["seeds"][ARM] = 4  # the next round asks for seed 3: now it is a trial that has not started
    layout.rounds.write_text(json.dumps(state))
    assert "1 planned trials never started" in _report(layout)


def test_seed_groups_are_the_assignments_without_the_seed():
    assert seed_group({"mask.rate": 0.5, "seed": 3}) == ARM
    assert seed_group({"seed": 0, "baseline": True}) == BASE


# ------------------------------------------------------------------------------------------------- plan
def _numbers(line: str) -> tuple[float, float]:
    found = re.search(r"least ([\d.,e+-]+) TFLOPs .* most ([\d.,e+-]+) TFLOPs", line)
    assert found, line
    return float(found.group(1).replace(",", "")), float(found.group(2).replace(",", ""))


def test_plan_prints_the_least_and_the_most_an_adaptive_spec_costs(tmp_path, capsys):
    from maskdm_sweeps.cli import main
    from maskdm_sweeps.testing import tiny_sweep_spec

    spec = tiny_sweep_spec(
        "ad", tmp_path / "results",
        sweep={"axes": {"mask.rate": [0.5]}, "baseline": "equal_compute", "seeds": {"min": 2, "max": 4}},
    )  # fmt: skip
    path = tmp_path / "ad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("seeds until decided:"))
    least, most = _numbers(line)
    assert 0 < least < most
    assert "after 2 seeds" in line and "at 4 seeds" in line
    assert main(["plan", "--json", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    costs = data["seeds_until_decided"]
    # every trial costs the same whatever its seed (each seed its own pre-training): min / max of the whole design
    assert costs["least_tflops"] == pytest.approx(costs["most_tflops"] * 2 / 4, rel=1e-12)
    assert costs["least_device_hours"] == pytest.approx(costs["most_device_hours"] * 2 / 4, rel=1e-12)
    # the most is the plan's own count of a fresh directory: every trial, each pre-training once
    totals = data["totals"]
    assert costs["most_tflops"] == pytest.approx(totals["train_tflops"] + totals["eval_tflops"], rel=1e-9)
    assert least == pytest.approx(costs["least_tflops"], rel=5e-3) and costs["budget"] is None

    small = costs["least_tflops"] / 2
    assert main(["plan", str(path), "--set", f"sweep.budget.tflops={small}"]) == 0
    out = capsys.readouterr().out
    assert f"budget: {small:g} TFLOPs (sweep.budget.tflops)" in out
    assert "less than the first round needs" in out


def test_plan_of_a_fixed_spec_has_no_rounds(tmp_path, capsys):
    from maskdm_sweeps.cli import main
    from maskdm_sweeps.testing import tiny_sweep_spec

    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_spec("fixed", tmp_path / "results", sweep={"baseline": True})))
    assert main(["plan", str(path)]) == 0
    assert "seeds until decided" not in capsys.readouterr().out
    assert main(["plan", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["seeds_until_decided"] is None


# ------------------------------------------------------------------------------------------------- MLflow
def test_the_parent_run_gets_the_rounds_metrics_and_verdict_tags(tmp_path):
    from mlflow import MlflowClient

    from maskdm_sweeps.sweepspec import load_spec
    from maskdm_sweeps.testing import tiny_sweep_spec
    from maskdm_sweeps.tracking import default_tracking_uri, finish_sweep_tracking, start_sweep_tracking

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_spec("s", tmp_path / "results")))
    plan = load_spec(path)
    tracking = start_sweep_tracking(plan, 1, resume=False)
    finish_sweep_tracking(
        tracking, "FINISHED", metrics={"rounds/patch r_0.5/seeds": 3.0}, tags={"verdict/patch r_0.5": "faster"}
    )
    c = MlflowClient(default_tracking_uri(str(tmp_path / "results")))
    (run,) = c.search_runs([c.get_experiment_by_name("s").experiment_id], "tags.kind = 'sweep'")
    assert run.data.tags["verdict/patch r_0.5"] == "faster"
    assert run.data.metrics["rounds/patch r_0.5/seeds"] == 3.0


# ------------------------------------------------------------------------------------------------- a raised budget
def _budget_plan(tmp_path: Path, tflops: float | None):
    from maskdm_sweeps.sweepspec import load_spec
    from maskdm_sweeps.testing import tiny_sweep_spec

    sweep = {"axes": {"mask.rate": [0.5]}, "baseline": "equal_compute", "seeds": {"min": 2, "max": 4}}
    if tflops is not None:
        sweep["budget"] = {"tflops": tflops}
    path = tmp_path / "ad.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_spec("ad", tmp_path / "results", sweep=sweep)))
    plan = load_spec(path, check_paths=False)
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    return plan


def _ended_by_the_budget(plan) -> dict[str, Any]:
    """rounds.json after round 1: patch r=0.5 open, its seed 2 left out by the budget."""
    from maskdm_sweeps.sweep.rounds import group_of

    arm = [t.trial_id for t in plan.trials if not t.is_baseline and t.config.seed < 2]
    base = [t.trial_id for t in plan.trials if t.is_baseline and t.config.seed < 2]
    seeds = {group_of(t): 2 for t in plan.trials}
    look = {"arm": "patch r=0.5", "target_fid": 60.0, "n_seeds": 2, "n_baseline_seeds": 2, "speedup": 1.5, "low": 0.7,
            "high": 3.0, "alpha": 0.025, "verdict": "open", "conditional_power": 0.6, "baseline_limits": False,
            "trial_ids": arm, "baseline_ids": base}  # fmt: skip
    state = {
        "seeds": seeds,
        "rounds": [_round(1, seeds, [look], {}, ["patch r=0.5"])],
        "stopped": {},
        "ended": "budget",
    }
    plan.layout.rounds.write_text(json.dumps(state))
    return look


@pytest.mark.parametrize("raised", [True, False])
def test_rounds_the_budget_ended_go_on_once_it_is_raised(tmp_path, raised):
    from maskdm_sweeps.sweep.rounds import RoundsState, design_cost, run_rounds

    plan = _budget_plan(tmp_path, None)
    first = RoundsState.load_or_start(plan).design(plan)
    least = design_cost(plan, first, "tflops")
    plan = _budget_plan(tmp_path, least * (2 if raised else 1.01))  # raised: room for the arm's seed 2
    look = _ended_by_the_budget(plan)
    ran: list[set[str]] = []

    def run_round(subset, number, state) -> bool:
        ran.append({t.trial_id for t in subset.trials})
        return True

    state = run_rounds(plan, run_round, lambda p: [{**look, "n_seeds": 3, "verdict": "faster"}])
    if not raised:
        assert ran == [] and state.ended == "budget" and len(state.rounds) == 1
        return
    seed2 = {t.trial_id for t in plan.trials if not t.is_baseline and t.config.seed == 2}
    assert len(ran) == 1 and seed2 <= ran[0]  # round 2 trains the arm's third seed
    assert state.ended == "decided" and len(state.rounds) == 2
    assert state.rounds[0]["added"] == {'{"mask.rate": 0.5}': 1}  # what the raised budget let round 1 add
    assert json.loads(plan.layout.rounds.read_text())["ended"] == "decided"


def test_run_refuses_a_budget_smaller_than_the_first_round_before_anything_starts(tmp_path, capsys):
    from maskdm_sweeps.cli import main
    from maskdm_sweeps.testing import tiny_sweep_spec

    sweep = {"axes": {"mask.rate": [0.5]}, "baseline": "equal_compute", "seeds": {"min": 2, "max": 4}}
    path = tmp_path / "ad.yaml"
    path.write_text(
        yaml.safe_dump(tiny_sweep_spec("ad", tmp_path / "results", sweep={**sweep, "budget": {"tflops": 1e-6}}))
    )
    assert main(["run", str(path)]) == 2
    assert "error: sweep.budget tflops: 1e-06 is less than the first round needs" in capsys.readouterr().err
    assert not (tmp_path / "results" / "ad").exists()  # nothing written, Ray not started


def test_the_resolved_spec_keeps_the_budget_so_resume_keeps_to_it(tmp_path):
    from maskdm_sweeps.sweep.records import save_resolved_spec
    from maskdm_sweeps.sweepspec.binding import check_binding, load_sweep_dir

    plan = _budget_plan(tmp_path, 123.0)
    save_resolved_spec(plan)
    resumed = load_sweep_dir(plan.sweep_dir, check_paths=False)
    assert resumed.spec.sweep.budget is not None and resumed.spec.sweep.budget.tflops == 123.0
    assert resumed.spec_hash == plan.spec_hash == _budget_plan(tmp_path, None).spec_hash  # not in the hash
    check_binding(_budget_plan(tmp_path, 456.0))  # a raised budget runs in the same directory
