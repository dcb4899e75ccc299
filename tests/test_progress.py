"""Following a sweep from a log file: start / resume / end lines and status lines with an ETA, tables as wide as their
content, short distinct labels, and ``plan --json`` / ``report --json`` with the tables' content."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskdm_sweeps.layout import EVENTS_FILE, REPORT_FILE
from maskdm_sweeps.naming import distinct, short_label
from maskdm_sweeps.sweep.progress import SweepProgress
from maskdm_sweeps.testing import tiny_sweep_spec

EXE = str(Path(sys.executable).with_name("maskdm-sweep"))
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ labels
def test_short_labels_name_the_arm_what_else_was_swept_and_the_seed():
    assert (
        short_label({"mask.rate": 0.5, "finetune.init_from": "ema", "seed": 0}, {"strategy": "patch", "rate": 0.5}, 0)
        == "patch r=0.5 · ema · s0"
    )
    assert (
        short_label(
            {"pretrain.steps": 20000, "finetune.steps": 80000, "seed": 1}, {"strategy": "patch", "rate": 0.9}, 1
        )
        == "patch r=0.9 · pre 20k · ft 80k · s1"
    )
    assert short_label({"baseline": True, "seed": 2}, None, 2) == "baseline · s2"
    assert (
        short_label(
            {"mask": {"strategy": "block", "rate": 0.9, "block_size": 4}, "seed": 0},
            {"strategy": "block", "rate": 0.9, "block_size": 4},
            0,
        )
        == "block b=4 r=0.9 · s0"
    )


def test_labels_two_trials_would_share_are_made_distinct_by_their_ids():
    labels = distinct({"t-aaaa1111": "patch r=0.5 · s0", "t-bbbb2222": "patch r=0.5 · s0", "t-cccc": "baseline · s0"})
    assert labels == {
        "t-aaaa1111": "patch r=0.5 · s0 · t-aaaa11",
        "t-bbbb2222": "patch r=0.5 · s0 · t-bbbb22",
        "t-cccc": "baseline · s0",
    }


# ------------------------------------------------------------------------------------------------ the ETA
def test_the_eta_is_the_compute_left_over_the_rate_measured_so_far(tmp_path):
    events = tmp_path / EVENTS_FILE
    progress = SweepProgress(
        events,
        work_flops=1000.0,
        labels={"t-1": "patch r=0.5 · s0"},
        pretrain_labels={},
        flops_per_step={("finetune", "t-1"): 2.0},
        eval_flops={("finetune", "t-1"): 100.0},
        started=0.0,
    )
    events.write_text(
        json.dumps(
            {
                "time": 1,
                "event": "stage_start",
                "stage": "finetune",
                "key": "t-1",
                "trial_id": "t-1",
                "from_step": 0,
                "to_step": 400,
            }
        )
        + "\n"
    )
    ((what, run, _),) = progress.poll()
    assert what == "start" and run.label == "patch r=0.5 · s0"
    assert progress.eta_seconds(now=10.0) is None  # nothing measured yet
    progress.on_result({"stage": "finetune", "maskdm_key": "t-1", "step": 100, "train/loss": 0.5})
    # 200 FLOPs done in 10 s: 800 left at 20 FLOP/s
    assert progress.eta_seconds(now=10.0) == pytest.approx(40.0)
    with open(events, "a") as f:
        f.write(
            json.dumps({"time": 2, "event": "stage_done", "stage": "finetune", "key": "t-1", "steps": 400, "fid": 12.5})
            + "\n"
        )
    ((what, run, _),) = progress.poll()
    assert what == "done" and run.fid == 12.5
    assert progress.flops_done() == 400 * 2.0 + 100.0  # its evaluations count once it is done
    assert "1 done" in progress.status_line(now=20.0) and "ETA 0:00:02" in progress.status_line(now=20.0)


# ------------------------------------------------------------------------------------------------ a log file
def _spec(tmp_path: Path, name: str, pretrain_steps: int) -> Path:
    spec = tiny_sweep_spec(
        name,
        tmp_path / "out",
        {"axes": {"finetune.init_from": ["online", "ema"]}},
        pretrain={"steps": pretrain_steps, "batch_size": 16},
        finetune={"steps": 40, "batch_size": 16},
        runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run_piped(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(MASKDM_CACHE=str(tmp_path / "cache"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run(
        [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stdout[-4000:]
    return out.stdout


@pytest.mark.slow
def test_a_sweep_piped_to_a_file_prints_starts_resumes_ends_and_status_lines_with_an_eta(tmp_path):
    first = _run_piped(tmp_path, "run", str(_spec(tmp_path, "piped", 20)), "--status-every", "1")
    lines = first.splitlines()
    assert "start   pretrain patch r=0.5 · s0 (20 steps)" in lines, first
    assert re.search(r"^done    pretrain patch r=0\.5 · s0 at step 20 loss \d\.\d{4}$", first, re.M), first
    for arm in ("patch r=0.5 · online · s0", "patch r=0.5 · ema · s0"):
        assert f"start   finetune {arm} (40 steps)" in lines, first
        assert re.search(rf"^done    finetune {re.escape(arm)} at step 40 loss \d\.\d{{4}}$", first, re.M), first
    status = [ln for ln in lines if ln.startswith("status ")]
    timed = [ln for ln in status if re.search(r" · ETA \d+:\d\d:\d\d \(", ln)]
    assert timed, status  # at least one ETA from measured throughput
    assert all(re.search(r"\d+ running, \d+ done, \d+ failed · [\d,]+ img/s", ln) for ln in status)
    # the start of the pre-training comes before its end, its end before the fine-tunings start
    assert lines.index("start   pretrain patch r=0.5 · s0 (20 steps)") < lines.index(
        "start   finetune patch r=0.5 · ema · s0 (40 steps)"
    )
    # the table at the end: one row per arm on one line, not wrapped at 80 columns
    assert any(ln.startswith("│ patch r=0.5 │ ema ") for ln in lines), first

    # a later sweep asks for a longer pre-training: the run resumes from its last step, and says so
    second = _run_piped(tmp_path, "run", str(_spec(tmp_path, "longer", 40)), "--status-every", "1")
    assert "resume  pretrain patch r=0.5 · s0 from step 20 of 40" in second.splitlines(), second


# ------------------------------------------------------------------------------------------------ JSON
def test_plan_json_holds_what_the_tables_show(tmp_path):
    out = subprocess.run(
        [EXE, "plan", str(ROOT / "experiments" / "budget.yaml"), "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["sweep"] == "budget" and len(data["trials"]) == 15 and len(data["pretrainings"]) == 3
    assert (data["totals"]["pretrain_steps_asked"], data["totals"]["pretrain_steps_to_train"]) == (600_000, 240_000)
    for pre in data["pretrainings"]:
        assert [n["steps"] for n in pre["lengths"]] == [20_000, 40_000, 60_000, 80_000]
        assert pre["steps_to_train"] == 80_000 and all(len(n["trials"]) == 1 for n in pre["lengths"])
    by_id = {t["trial_id"]: t for t in data["trials"]}
    assert sum(1 for t in by_id.values() if t["starts_from"] is None) == 3  # the baselines
    assert {t["short_label"] for t in by_id.values()} >= {
        "patch r=0.9 · pre 20k · ft 80k · s0",
        "baseline · pre 0 · ft 100k · s2",
    }
    table = subprocess.run(
        [EXE, "plan", str(ROOT / "experiments" / "budget.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250"},
    ).stdout
    for trial_id, trial in by_id.items():  # every trial of the table, with its fine-tuning steps
        row = next(ln for ln in table.splitlines() if ln.startswith(f"│ {trial_id}"))  # the trials table
        assert str(trial["finetune_steps"]) in row
    assert f"{data['totals']['gpu_hours']:.2f} GPU-hours" in " ".join(table.split())


def test_report_json_holds_the_fid_table_and_the_speedups(tmp_path, capsys):
    from fake_sweep import build_sweep
    from maskdm_sweeps.cli import main
    from maskdm_sweeps.results import comparison_table, load

    w = build_sweep(tmp_path)
    assert main(["report", str(w["dir"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    trials, _ = load(w["dir"])
    table = comparison_table(trials)
    assert [a["arm"] for a in data["arms"]] == list(table["arm"])
    assert [a["fid_mean"] for a in data["arms"]] == pytest.approx(list(table["fid_mean"]))
    assert {row["arm"] for row in data["speedup"]} == set(table["arm"]) - {"baseline"}
    assert len(data["speedup_sentences"]) == len(data["speedup"])
    assert Path(data["files"]["report"]).name == REPORT_FILE


def test_a_searched_trial_the_plan_did_not_list_is_measured_from_its_running_total(tmp_path):
    events = tmp_path / EVENTS_FILE
    progress = SweepProgress(events, work_flops=1000.0, labels={}, pretrain_labels={}, flops_per_step={}, started=0.0)
    events.write_text(
        json.dumps(
            {
                "time": 1,
                "event": "stage_start",
                "stage": "finetune",
                "key": "t-sampled",
                "trial_id": "t-sampled",
                "from_step": 0,
                "to_step": 100,
            }
        )
        + "\n"
    )
    progress.poll()
    progress.on_result({"stage": "finetune", "maskdm_key": "t-sampled", "step": 50, "cost/train_tflops": 4e-10})
    assert progress.flops_done() == pytest.approx(400.0)  # 8 FLOPs per step from 400 FLOPs at step 50
    assert progress.eta_seconds(now=10.0) == pytest.approx(15.0)
