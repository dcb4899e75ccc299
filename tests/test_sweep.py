"""Sweeps on a real Ray Tune (one local Ray session for the module, 2 CPUs): sharing, reuse, retries, ASHA, Optuna."""

import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from maskdm_sweeps.layout import StageRun
from maskdm_sweeps.sweep import read_events, run_sweep
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.sweepspec.binding import SpecChanged
from maskdm_sweeps.testing import crash_once, tiny_sweep_spec
from maskdm_sweeps.trainer import fit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def plan_for(
    tmp_path: Path,
    name: str,
    sweep: dict,
    base_overrides: dict | None = None,
    resources=None,
    output_dir: str | None = None,
):
    small = {
        "pretrain": {"steps": 20, "batch_size": 16},
        "finetune": {"steps": 20, "batch_size": 16},
        "runtime": {"log_every_steps": 5, "checkpoint_every_steps": 5},
    }
    for section, values in (base_overrides or {}).items():
        small[section] = {**small.get(section, {}), **values}
    spec = tiny_sweep_spec(name, output_dir or tmp_path / "results", sweep, resources, **small)
    if output_dir == "results":
        del spec["output_dir"]  # the default
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


@contextmanager
def one_torch_thread():
    """As the trial processes run (resources.cpus: 1): CPU reductions, so the trained weights, depend on the threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stage_counts(plan, invocation: int | None = None) -> Counter:
    events, current = [], 0
    for e in read_events(plan.sweep_dir):
        if e["event"] == "invocation":
            current = e["number"]
        elif e["event"] == "stage_done" and (invocation is None or current == invocation):
            events.append(e["stage"])
    return Counter(events)


def test_shared_pretrainings_run_once_and_are_reused_by_a_later_run(tmp_path, monkeypatch):
    # a relative output_dir, as `make run` uses: relative to where the command runs, not to Tune's trial dirs
    monkeypatch.chdir(tmp_path)
    sweep = {"axes": {"mask.rate": [0.25, 0.75], "finetune.steps": [10, 20]}}
    plan = plan_for(tmp_path, "share", sweep, output_dir="results")
    assert plan.sweep_dir == tmp_path / "results" / "share"
    assert len(plan.trials) == 4 and len(plan.pretrains) == 2
    outcome = run_sweep(plan)
    assert outcome.exit_code == 0 and not outcome.failed
    assert stage_counts(plan) == Counter({"pretrain": 2, "finetune": 4})
    # another question (a longer fine-tuning budget) is refused in this sweep's directory ...
    plan2 = plan_for(tmp_path, "share", {"axes": {"mask.rate": [0.25, 0.75], "finetune.steps": [30]}})
    with pytest.raises(SpecChanged, match=r"sweep\.axes\.finetune\.steps: \[10, 20\] -> \[30\]"):
        run_sweep(plan2)
    # ... and, under a name of its own, runs no pre-training again
    plan2 = plan_for(tmp_path, "share-longer", {"axes": {"mask.rate": [0.25, 0.75], "finetune.steps": [30]}})
    assert all(plan2.pretrain_finished(k) for k in plan2.pretrains)
    outcome2 = run_sweep(plan2)
    assert outcome2.exit_code == 0 and len(outcome2.finished) == 2 and not outcome2.reused
    assert stage_counts(plan2) == Counter({"finetune": 2})


def test_a_trial_that_crashes_once_is_retried_from_its_checkpoint_with_identical_results(tmp_path):
    sweep, one_stage = {}, {"pretrain": {"steps": 0}, "finetune": {"steps": 30}}  # one stage run keeps it short
    crashy = plan_for(tmp_path / "crashy", "fault", sweep, one_stage, {"max_failures": 1})
    outcome = run_sweep(crashy, reporters=crash_once("finetune", 17))  # the trial process dies once at step 17
    assert outcome.exit_code == 0, outcome.failed
    starts = [e for e in read_events(crashy.sweep_dir) if e["event"] == "stage_start" and e["stage"] == "finetune"]
    assert [e["from_step"] for e in starts] == [0, 15]  # the retry resumed from the step-15 checkpoint
    (trial,) = crashy.trials
    # the fine-tuning run through without a crash: in this process, as a trial process of one CPU runs it (a sweep
    # of its own would train the same weights, bit for bit, only slower)
    clean = StageRun(tmp_path / "clean")
    with one_torch_thread():
        fit(trial.config, "finetune", clean.path)
    a = json.loads(clean.result.read_text())
    b = json.loads(crashy.layout.finetune(trial.trial_id).result.read_text())
    assert a["loss_final"] == b["loss_final"] and a["steps"] == b["steps"] == 30
    wa, wb = (
        torch.load(run.result_checkpoint(r), weights_only=True)["model"]
        for run, r in ((clean, a), (crashy.layout.finetune(trial.trial_id), b))
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_asha_stops_the_worse_trials_of_a_search_early(tmp_path):
    sweep = {
        "search": {
            "method": "random",
            "num_samples": 6,
            "seed": 3,
            "space": {"finetune.lr": {"type": "loguniform", "low": 1e-6, "high": 3e-2}},
        },
        "scheduler": {"type": "asha", "metric": "train/loss", "mode": "min", "grace_period": 10, "reduction_factor": 2},
    }
    plan = plan_for(tmp_path, "asha", sweep, {"pretrain": {"steps": 0}, "finetune": {"steps": 40}})
    outcome = run_sweep(plan)
    assert outcome.exit_code == 0, outcome.failed
    assert outcome.stopped, "ASHA stopped no trial"
    assert outcome.finished, "ASHA stopped every trial"
    assert len(outcome.stopped) + len(outcome.finished) == 6


def test_optuna_search_samples_with_the_seeded_tpe_sampler(tmp_path):
    import optuna

    space = {"finetune.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2}}
    sweep = {"search": {"method": "optuna", "num_samples": 3, "seed": 7, "space": space, "metric": "train/loss"}}
    plan = plan_for(
        tmp_path, "optuna", sweep, {"pretrain": {"steps": 0}, "finetune": {"steps": 10}}, {"max_concurrent_trials": 1}
    )
    outcome = run_sweep(plan)
    assert outcome.exit_code == 0 and len(outcome.finished) == 3
    used = sorted(json.loads(plan.layout.finetune(t).config.read_text())["finetune"]["lr"] for t in outcome.finished)
    # independent: the same seeded sampler asked directly (TPE's first trials are its seeded random start-up)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=7))
    dist = {"finetune.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    expected = sorted(study.ask(dist).params["finetune.lr"] for _ in range(3))
    assert used == pytest.approx(expected, rel=1e-9)


def test_a_diverging_stage_fails_once_without_a_retry_and_its_reason_reaches_the_results(tmp_path):
    # the baseline (fine-tuning at lr 1e12) runs in phase 1 beside the pre-training; max_failures would retry it
    sweep = {"axes": {"mask.rate": [0.5]}, "baseline": True}
    bad = plan_for(tmp_path, "nan", sweep, {"finetune": {"lr": 1e12}}, resources={"max_failures": 2})
    baseline = next(t for t in bad.trials if t.is_baseline)
    outcome = run_sweep(bad, track=False)
    assert outcome.exit_code != 0
    assert "TrainingDiverged" in outcome.failed[baseline.trial_id]
    starts = [e for e in read_events(bad.sweep_dir) if e["event"] == "stage_start" and e["key"] == baseline.trial_id]
    assert len(starts) == 1  # deterministic divergence: not retried
    from maskdm_sweeps.results import load

    trials, _ = load(bad.sweep_dir)
    row = trials.set_index("trial_id").loc[baseline.trial_id]
    assert row["status"] == "failed" and "NaN or infinite at step" in row["error"]
    report = bad.layout.report.read_text().split("## Trials that did not finish")[1]
    assert baseline.trial_id in report and "NaN or infinite" in report


def test_a_failed_pretraining_lists_its_trials_as_failed_with_the_reason(tmp_path):
    plan = plan_for(
        tmp_path, "prefail", {"axes": {"mask.rate": [0.5]}}, {"pretrain": {"lr": 1e12}}, resources={"max_failures": 1}
    )
    trial = plan.trials[0]
    outcome = run_sweep(plan, track=False)
    assert outcome.exit_code == 1 and "NaN or infinite" in outcome.failed[trial.trial_id]
    from maskdm_sweeps.results import load

    trials, _ = load(plan.sweep_dir)
    row = trials.set_index("trial_id").loc[trial.trial_id]  # a row, though its fine-tuning never started
    assert row["status"] == "failed" and "NaN or infinite" in row["error"] and row["steps_done"] == 0
    assert trial.trial_id in plan.layout.report.read_text().split("## Trials that did not finish")[1]


def pretrain_starts(plan, invocation: int = 1) -> list[dict]:
    """The pre-training stage runs a sweep's invocation started: ``{key, from_step, to_step, milestones}``."""
    events, current = [], 0
    for e in read_events(plan.sweep_dir):
        if e["event"] == "invocation":
            current = e["number"]
        elif e["event"] == "stage_start" and e["stage"] == "pretrain" and current == invocation:
            events.append(e)
    return events


def test_pretraining_lengths_share_one_run_which_later_sweeps_extend_reuse_or_branch(tmp_path):
    from maskdm_sweeps.results import load
    from maskdm_sweeps.sweep.milestones import plan_lines
    from maskdm_sweeps.sweepspec.identity import with_pretrain_steps

    out, tiny = str(tmp_path / "results"), {"finetune": {"steps": 10}}
    # 1. two lengths in one sweep: one run, trained to the longer, keeping both
    both = plan_for(tmp_path, "both", {"axes": {"pretrain.steps": [10, 20]}}, tiny, output_dir=out)
    (key,) = both.pretrains
    assert run_sweep(both, track=False).exit_code == 0
    starts = pretrain_starts(both)
    assert [(e["key"], e["from_step"], e["to_step"], e["milestones"]) for e in starts] == [(key, 0, 20, [10, 20])]
    trials, _ = load(both.sweep_dir)
    per_step = trials["pretrain_tflops"].max() / 20
    assert sorted(trials["pretrain_tflops"] / per_step) == pytest.approx([10, 20])  # each its own length, in full
    assert trials["pretrain_tflops_share"].sum() == pytest.approx(20 * per_step)  # what was trained, once
    # 2. a later sweep asks for 40: the run continues from its last step
    longer = plan_for(tmp_path, "longer", {"axes": {"pretrain.steps": [40]}}, tiny, output_dir=out)
    assert list(longer.pretrains) == [key]
    assert [(e["key"], e["from_step"]) for e in pretrain_starts(longer)] == [] and run_sweep(longer).exit_code == 0
    assert [(e["key"], e["from_step"], e["to_step"]) for e in pretrain_starts(longer)] == [(key, 20, 40)]
    # 3. one that asks for a kept length trains no pre-training at all
    kept = plan_for(tmp_path, "kept", {"axes": {"pretrain.steps": [10, 40]}}, tiny, output_dir=out)
    assert all(kept.pretrain_finished(k) for k in kept.pretrains)
    assert run_sweep(kept, track=False).exit_code == 0 and pretrain_starts(kept) == []
    assert load(kept.sweep_dir)[0]["pretrain_reused"].all()
    # 4. a length the run passed without keeping: a branch from the newest kept length below it, bit for bit
    # the state a run of that length alone reaches
    branch = plan_for(tmp_path, "branch", {"axes": {"pretrain.steps": [15]}}, tiny, output_dir=out)
    (job,), _ = plan_lines(branch.layout, key, [15])
    assert (job.unit, job.branch_from) == (f"{key}/from-10-to-15", ("main", 10))
    assert run_sweep(branch, track=False).exit_code == 0
    assert [(e["key"], e["from_step"]) for e in pretrain_starts(branch)] == [(job.unit, 10)]
    with one_torch_thread():
        alone = fit(with_pretrain_steps(branch.trials[0].config, 15), "pretrain", tmp_path / "alone")
    served = torch.load(branch.milestone(key, 15), weights_only=True)["model"]
    separate = torch.load(alone.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(served[k], separate[k]) for k in served)
    row = load(branch.sweep_dir)[0].iloc[0]
    assert row["pretrain_tflops"] == pytest.approx(15 * per_step)  # its own length, the shared prefix included
