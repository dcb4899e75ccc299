"""On a real Ray sweep: every trial of a shared pre-training starts from the state of its own length (the digest it
records names the file, whose weights are those of a separate pre-training of that length), and milestones found
corrupt by a later sweep are set aside, trained again, and fine-tuned from exactly as the intact ones were."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from maskdm_sweeps.layout import SweepDir, read_json, read_notices
from maskdm_sweeps.sweep import read_events, run_sweep
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.sweepspec.identity import with_pretrain_steps
from maskdm_sweeps.testing import corrupt_state_file, tiny_sweep_spec
from maskdm_sweeps.trainer import fit
from maskdm_sweeps.trainer.checkpoint import load_checkpoint, verify_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

LENGTHS = (10, 20, 30)  # one pre-training line serves all three


def lengths_sweep(tmp_path: Path, name: str, output_dir: Path):
    # half a CPU each: the three trials run at once (each with one torch thread)
    spec = tiny_sweep_spec(
        name,
        output_dir,
        {"axes": {"pretrain.steps": list(LENGTHS)}},
        {"cpus": 0.5},
        pretrain={"batch_size": 16},
        finetune={"steps": 10, "batch_size": 16},
        runtime={"log_every_steps": 5, "checkpoint_every_steps": 10},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A finished sweep over three pre-training lengths, one seed."""
    root = tmp_path_factory.mktemp("serving")
    plan = lengths_sweep(root, "lengths", root / "results")
    assert len(plan.pretrains) == 1 and run_sweep(plan, track=False).exit_code == 0
    return plan


def test_each_trial_starts_from_the_state_a_pretraining_of_its_own_length_reaches(first, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial processes do (resources.cpus: 1): CPU reductions depend on the threads
    try:
        for trial in first.trials:
            length = trial.config.pretrain.steps
            manifest = read_json(first.layout.manifest(trial.trial_id))
            started = read_json(first.layout.finetune(trial.trial_id).result)["init_sha256"]
            served = Path(manifest["pretrain_checkpoint"])  # the file whose bytes have the digest it started from
            assert started == manifest["pretrain_sha256"] == sha256(served), length
            alone = fit(with_pretrain_steps(trial.config, length), "pretrain", tmp_path / str(length))
            weights, expected = load_checkpoint(served)["model"], load_checkpoint(Path(alone.checkpoint))["model"]
            assert all(torch.equal(weights[k], expected[k]) for k in expected), f"trial of {length} steps"
    finally:
        torch.set_num_threads(threads)


def test_corrupt_milestones_are_set_aside_trained_again_and_fine_tuned_from_as_the_intact_ones(first, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(first.layout.store, SweepDir(root, "x").store)  # the first sweep's store stays intact
    (key,) = first.pretrains
    main = SweepDir(root, "x").pretrain(key)
    damage = dict(zip(LENGTHS, ("flipped", "truncated", "garbage"), strict=True))
    for length, how in damage.items():
        corrupt_state_file(main.milestone(length), how)
    again = lengths_sweep(tmp_path, "again", root)
    assert all(again.pretrain_finished(k) for k in again.pretrains)  # on disk, every length looks kept
    outcome = run_sweep(again, track=False)
    assert outcome.exit_code == 0 and not outcome.failed
    notices = [e["message"] for e in read_notices(again.sweep_dir)]
    assert outcome.notices and all(
        any(m in line for line in outcome.notices) for m in notices
    )  # on the driver's output
    for length, how in damage.items():
        path = main.milestone(length)
        # the user is told which file, and what was wrong with it
        warned = [m for m in notices if f"milestone {path} is unusable" in m]
        assert warned and ("truncated" if how == "truncated" else "sha256") in warned[0], (how, warned)
        assert path.with_name(path.name + ".corrupt").exists(), length  # kept for inspection
        verify_state(again.milestone(key, length))  # kept again, intact
    retrained = [e for e in read_events(again.sweep_dir) if e["event"] == "stage_start" and e["stage"] == "pretrain"]
    assert retrained and min(e["from_step"] for e in retrained) == 0  # 10 and 20: from scratch (30: from its head)
    for trial in first.trials:
        intact = read_json(first.layout.finetune(trial.trial_id).result)
        served = read_json(again.layout.finetune(trial.trial_id).result)
        assert served["loss_final"] == intact["loss_final"], trial.config.pretrain.steps
