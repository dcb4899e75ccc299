"""A sweep directory is bound to its resolved spec, and can be moved.

One tiny sweep (a pre-training, one fine-tuning that dies part-way) is run once for the module in ``<tmp>/a``; each
test works on it read-only or on a copy: an edited spec is refused before anything is written, ``--replace`` moves
the old directory aside, an edited ``spec.resolved.yaml`` is refused, a copied directory resumes where it is, and
results leave out trial directories that the plan does not hold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from maskdm_sweeps.cli import main
from maskdm_sweeps.layout import (
    BRANCHES_DIR,
    CHECKPOINTS_DIR,
    DRIVER_LOCK,
    MLFLOW_BUFFER_FILE,
    MLFLOW_DB,
    MLFLOW_TARGET_FILE,
    STORE_DIR,
    TUNE_DIR,
    StageRun,
    SweepDir,
    step_file,
)
from maskdm_sweeps.lines import MAIN, Line, line_named
from maskdm_sweeps.sweep import read_events, run_sweep
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.testing import crash_once, tiny_sweep_spec

NAME = "bind"


def write_spec(path: Path, output_dir: Path, lr: float = 2e-4) -> Path:
    spec = tiny_sweep_spec(
        NAME,
        output_dir,
        pretrain={"steps": 10, "batch_size": 16},
        finetune={"steps": 20, "batch_size": 16, "lr": lr},
        runtime={"log_every_steps": 5, "checkpoint_every_steps": 5},
        resources={"max_failures": 0},
    )
    path.write_text(yaml.safe_dump(spec))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime in ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def copy_sweep(src_root: Path, dst_root: Path, with_store: bool = True) -> SweepDir:
    """The sweep directory (and its results root's shared pre-trainings) copied to another results root."""
    src, dst = SweepDir(src_root, NAME), SweepDir(dst_root, NAME)
    shutil.copytree(src.path, dst.path, symlinks=True)
    if with_store:
        shutil.copytree(src.store, dst.store, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def partial(tmp_path_factory, ray_session):
    """``<tmp>/a``: a finished pre-training and a fine-tuning that died at step 15 (a checkpoint at step 10)."""
    tmp = tmp_path_factory.mktemp("binding")
    plan = load_spec(write_spec(tmp / "spec.yaml", tmp / "a"))
    outcome = run_sweep(plan, track=False, reporters=crash_once("finetune", 15))
    assert outcome.exit_code == 1 and len(outcome.failed) == 1, outcome
    (trial,) = plan.trials
    assert not plan.trial_finished(trial.trial_id)
    assert (plan.layout.finetune(trial.trial_id).checkpoints / f"step_{10:09d}.pt").exists()
    return tmp, plan


@pytest.mark.slow  # the module's sweep
def test_an_edited_spec_run_into_its_directory_exits_2_naming_the_change_and_writes_nothing(partial, capsys):
    tmp, _plan = partial
    before = snapshot(tmp / "a")
    edited = write_spec(tmp / "edited.yaml", tmp / "a", lr=1e-3)
    assert main(["run", str(edited)]) == 2
    err = capsys.readouterr().err
    assert "base.finetune.lr: 0.0002 -> 0.001" in err, err
    assert "--set name=bind-2" in err and "--replace" in err, err
    assert snapshot(tmp / "a") == before


@pytest.mark.slow  # the module's sweep, and a fine-tuning
def test_replace_moves_the_old_directory_aside_and_a_rerun_of_the_same_spec_finds_its_trials(partial, tmp_path, capsys):
    tmp, plan = partial
    old = copy_sweep(tmp / "a", tmp_path)
    old_files = snapshot(old.path)
    edited = write_spec(tmp_path / "edited.yaml", tmp_path, lr=1e-3)
    assert main(["run", str(edited), "--replace"]) == 0
    assert "--replace: moved" in capsys.readouterr().out
    (aside,) = tmp_path.glob(f"{NAME}.replaced-*")
    moved = snapshot(aside)
    assert moved.pop(DRIVER_LOCK) and old_files.pop(DRIVER_LOCK)  # held while it moved
    assert moved == old_files  # moved whole, nothing deleted
    new = load_spec(edited)
    assert (
        new.spec_hash != plan.spec_hash and json.loads(new.layout.plan_file.read_text())["spec_hash"] == new.spec_hash
    )
    assert all(new.trial_finished(t.trial_id) for t in new.trials)
    starts = [e["stage"] for e in read_events(new.sweep_dir) if e["event"] == "stage_start"]
    assert starts == ["finetune"]  # its pre-training was found in the shared store

    # the same spec again: nothing is refused and nothing trains
    assert main(["run", str(edited)]) == 0
    assert "1/1 trials finished (1 were already finished)" in capsys.readouterr().out
    assert [e["stage"] for e in read_events(new.sweep_dir) if e["event"] == "stage_start"] == starts


@pytest.mark.slow  # the module's sweep
def test_resume_refuses_a_resolved_spec_edited_by_hand_naming_both_hashes(partial, tmp_path, capsys):
    tmp, plan = partial
    copy = copy_sweep(tmp / "a", tmp_path, with_store=False)
    text = copy.resolved_spec.read_text()
    assert "lr: 0.0002" in text
    copy.resolved_spec.write_text(text.replace("lr: 0.0002", "lr: 0.0003"))
    before = snapshot(tmp_path)
    for command in ("resume", "report"):
        assert main([command, str(copy.path)]) == 2
        err = capsys.readouterr().err
        assert str(copy.resolved_spec) in err and plan.spec_hash in err, err
        edited_hash = err.split(" has hash ")[1].split(",")[0]
        assert edited_hash != plan.spec_hash and len(edited_hash) == 16
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # the module's sweep, and a fine-tuning
def test_a_copied_sweep_directory_resumes_in_place_and_leaves_the_original_untouched(partial, tmp_path, capsys):
    tmp, plan = partial
    original = snapshot(tmp / "a")
    copy = copy_sweep(tmp / "a", tmp_path / "moved")  # without the MLflow store: a new one is made beside it
    assert main(["resume", str(copy.path)]) == 0, capsys.readouterr().err
    assert snapshot(tmp / "a") == original
    (trial,) = plan.trials
    ft = copy.finetune(trial.trial_id)
    result = json.loads(ft.result.read_text())
    assert result["checkpoint"] == f"{CHECKPOINTS_DIR}/step_{20:09d}.pt" and ft.result_checkpoint(result).exists()
    starts = [e for e in read_events(copy.path) if e["event"] == "stage_start"]
    assert [(e["stage"], e["from_step"]) for e in starts][-1] == ("finetune", 10)  # from the copied checkpoint
    assert (tmp_path / "moved" / MLFLOW_DB).exists()  # the default store follows the directory
    target = json.loads((ft.path / MLFLOW_TARGET_FILE).read_text())
    assert target["store"] == f"../../../../{MLFLOW_DB}"
    # no file the sweep reads names the original (Tune's own state and MLflow's write-ahead buffer aside)
    ours = [
        p
        for p in copy.path.rglob("*")
        if p.is_file()
        and p.suffix in (".json", ".jsonl", ".yaml")
        and TUNE_DIR not in p.relative_to(copy.path).parts
        and p.name != MLFLOW_BUFFER_FILE
    ]
    assert ours and not [p for p in ours if str(tmp / "a") in p.read_text()]


@pytest.mark.slow  # the module's sweep
def test_results_leave_out_trial_directories_the_plan_does_not_hold_and_say_so(partial, tmp_path, capsys):
    tmp, plan = partial
    copy = copy_sweep(tmp / "a", tmp_path, with_store=True)
    (trial,) = plan.trials
    stray = copy.trial_dir("t-0123456789")  # another spec's trial, left in the directory
    shutil.copytree(copy.trial_dir(trial.trial_id), stray)
    manifest = json.loads(copy.manifest(stray.name).read_text())
    copy.manifest(stray.name).write_text(json.dumps({**manifest, "trial_id": stray.name}))
    assert main(["report", str(copy.path)]) == 0
    trials = pd.read_parquet(copy.trials_parquet)
    assert trials["trial_id"].tolist() == [trial.trial_id]
    assert "`t-0123456789`" in copy.report.read_text() and "left out" in copy.report.read_text()

    # a plan.json that is not the plan of the resolved spec beside it: no report at all
    plan_json = json.loads(copy.plan_file.read_text())
    copy.plan_file.write_text(json.dumps({**plan_json, "spec_hash": "0" * 16}))
    assert main(["report", str(copy.path)]) == 2
    assert "0" * 16 in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ older files
def test_paths_written_before_they_were_relative_are_read_by_their_name(tmp_path):
    sweep = SweepDir(tmp_path, NAME)
    key, b1 = sweep.pretrain("k").path, sweep.pretrain("k").path / BRANCHES_DIR / "b1"
    branch = line_named(sweep, "k", "b2")
    branch.path.mkdir(parents=True)
    for written, parent, name in (
        (f"/gone/{STORE_DIR}/k", key, MAIN),
        (f"/gone/{STORE_DIR}/k/{BRANCHES_DIR}/b1", b1, "b1"),
        ("../b1", b1, "b1"),
        ("../..", key, MAIN),
    ):
        branch.branch.write_text(json.dumps({"parent": written, "from_step": 5}))
        assert branch.origin() == (Line(parent, "k", name), 5), written
    run = StageRun(tmp_path / "ft")
    ckpt = step_file(20, ".pt")
    assert run.result_checkpoint({"checkpoint": f"/gone/ft/checkpoints/{ckpt}"}) == run.checkpoints / ckpt
    assert run.result_checkpoint({"checkpoint": f"{CHECKPOINTS_DIR}/{ckpt}"}) == run.checkpoints / ckpt
