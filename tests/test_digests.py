"""Digests of state files: every checkpoint and milestone carries the sha256 of its bytes, written with it; a state is
checked against it before it is used, and an unusable one is reported and fallen back from."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from maskdm_sweeps.layout import StageRun, step_file
from maskdm_sweeps.testing import corrupt_state_file, tiny_trial_config
from maskdm_sweeps.trainer import JsonlReporter, fit, list_checkpoints, read_jsonl_metrics
from maskdm_sweeps.trainer.checkpoint import UnusableState, load_checkpoint, read_state, state_record


def config(**finetune):
    return tiny_trial_config(
        pretrain={"steps": 20, "batch_size": 16},
        finetune={"steps": 20, "batch_size": 16, **finetune},
        runtime={"log_every_steps": 5, "checkpoint_every_steps": 10, "keep_checkpoints": 2},
    )


def losses(path: Path) -> dict[int, float]:
    return {step: v["train/loss"] for step, v in read_jsonl_metrics(path) if "train/loss" in v}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread, as a trial of one CPU has: faster on a shared machine, and the losses do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> StageRun:
    """A 20-step pre-training keeping its states at 10 and 20."""
    run = StageRun(tmp_path_factory.mktemp("digests") / "line")
    fit(config(), "pretrain", run.path, milestones=[10, 20])
    return run


def test_every_state_file_has_the_sha256_of_its_bytes_recorded_beside_it_and_a_milestone_is_a_file_of_its_own(line):
    checkpoints = list_checkpoints(line.checkpoints)
    milestones = [line.milestone(n) for n in (10, 20)]
    assert [p.name for p in checkpoints] == [p.name for p in milestones]
    for path in checkpoints + milestones:
        record = json.loads(state_record(path).read_text())
        assert record["sha256"] == sha256(path) and record["bytes"] == path.stat().st_size, path
    assert json.loads(state_record(milestones[1]).read_text())["train_tflops"] > 0  # the cost record holds it
    # not a hard link: what later happens to the checkpoint (a rewrite, a rotation, a damaged disk block) spares it
    assert not os.path.samefile(checkpoints[1], milestones[1])


def test_a_rolling_checkpoint_with_flipped_bytes_is_set_aside_and_the_stage_resumes_from_the_previous_one(
    tmp_path, caplog
):
    run = StageRun(tmp_path / "run")
    first = fit(config(), "finetune", run.path, JsonlReporter(tmp_path / "first.jsonl"))
    newest = list_checkpoints(run.checkpoints)[-1]
    corrupt_state_file(newest, "flipped")
    with caplog.at_level(logging.WARNING, logger="maskdm_sweeps"):
        again = fit(config(), "finetune", run.path, JsonlReporter(tmp_path / "again.jsonl"))
    assert any(str(newest) in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records), caplog.text
    assert (run.checkpoints / f"{newest.name}.corrupt").exists()  # kept for inspection
    first_losses, again_losses = losses(tmp_path / "first.jsonl"), losses(tmp_path / "again.jsonl")
    assert sorted(again_losses) == [15, 20]  # trained again from the step-10 checkpoint (logged every 5 steps) ...
    assert again_losses == {s: first_losses[s] for s in (15, 20)} and again.loss_final == first.loss_final  # alike


@pytest.mark.parametrize("how", ["flipped", "truncated", "garbage"])
def test_a_finetuning_refuses_a_damaged_pretrained_state_naming_the_file(line, tmp_path, how):
    kept = StageRun(tmp_path).milestone(10)
    kept.parent.mkdir()
    for src in (line.milestone(10), state_record(line.milestone(10))):
        shutil.copy(src, kept.parent / src.name)
    corrupt_state_file(kept, how)
    with pytest.raises(UnusableState, match=str(kept)) as err:
        fit(config(), "finetune", tmp_path / "ft", init_checkpoint=kept)
    assert ("truncated" if how == "truncated" else "sha256") in str(err.value)


def test_a_finetuning_records_the_digest_of_the_state_it_started_from(line, tmp_path):
    milestone = line.milestone(10)
    result = fit(
        config(steps=5), "finetune", tmp_path / "ft", JsonlReporter(tmp_path / "ft.jsonl"), init_checkpoint=milestone
    )
    expected = sha256(milestone)
    (params,) = [
        r["values"] for r in map(json.loads, (tmp_path / "ft.jsonl").read_text().splitlines()) if r["kind"] == "params"
    ]
    assert params["init_sha256"] == expected  # -> MLflow params, with the file relative to the run (movable)
    assert (tmp_path / "ft" / params["init_checkpoint"]).resolve() == milestone.resolve()
    assert result.init_sha256 == expected
    assert json.loads(StageRun(tmp_path / "ft").result.read_text())["init_sha256"] == expected
    # resumed (the stage asked for more steps), it keeps the digest it started from, without reading the file again
    away = milestone.rename(tmp_path / "away.pt")
    try:
        longer = fit(config(steps=10), "finetune", tmp_path / "ft", init_checkpoint=milestone)
    finally:
        away.rename(milestone)
    assert longer.steps == 10 and longer.init_sha256 == expected


def test_a_state_from_before_digests_is_used_with_a_warning_only_if_it_loads_cleanly(line, tmp_path, caplog):
    old = tmp_path / step_file(10, ".pt")  # as written before digests: no record beside it
    shutil.copy(line.checkpoints / old.name, old)
    with caplog.at_level(logging.WARNING, logger="maskdm_sweeps"):
        state, digest = read_state(old)
    assert "unverified" in caplog.text and str(old) in caplog.text
    assert digest == sha256(old) and state["step"] == 10
    assert all(
        torch.equal(state["model"][k], v) for k, v in load_checkpoint(line.checkpoints / old.name)["model"].items()
    )
    for how, problem in (("garbage", "not finite"), ("truncated", "does not load")):
        shutil.copy(line.checkpoints / old.name, old)
        corrupt_state_file(old, how)
        with pytest.raises(UnusableState, match=problem):
            read_state(old)
