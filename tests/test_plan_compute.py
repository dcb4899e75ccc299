"""``maskdm-sweep plan``'s compute: exact training and evaluation TFLOPs, and GPU-hours that count evaluation.

The expected numbers are computed here from the FLOP primitives (``maskdm.flops``, the FID backends' feature FLOPs)
and the spec's settings, not through ``trainer.compute`` or ``sweep.estimate``.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from maskdm_sweeps.maskdm import MODEL_PRESETS, forward_flops, train_flops_per_image
from maskdm_sweeps.metrics import feature_flops_per_image
from maskdm_sweeps.sweep.estimate import REFERENCE_IMAGES_PER_SECOND, stage_gpu_hours
from maskdm_sweeps.sweep.plan_cost import totals
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.sweepspec.expand import SweepPlan
from maskdm_sweeps.sweepspec.identity import with_pretrain_steps

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SCRIPT = Path(sys.executable).with_name("maskdm-sweep")
TERA = 1e12

# a small sweep whose one pre-training feeds two fine-tunings, both stages evaluated (3 evaluations each)
SMALL: dict[str, Any] = {
    "name": "compute",
    "base": {
        "data": {"name": "digits", "image_size": 8},
        "model": {"preset": "uvit-digits"},
        "mask": {"strategy": "patch", "rate": 0.5},
        "pretrain": {"steps": 60, "batch_size": 16},
        "finetune": {"steps": 50, "batch_size": 8},
        "eval": {
            "every_steps": 20,
            "stages": ["pretrain", "finetune"],
            "num_samples": 32,
            "batch_size": 32,
            "sampling_steps": 5,
            "grid_size": 48,
            "fid_repeats": 2,
            "backend": "digits-classifier",
        },
        "runtime": {"device": "cpu"},
    },
    "sweep": {"axes": {"finetune.init_from": ["online", "ema"]}, "baseline": True},
    "resources": {"gpus": 1, "cpus": 1},
}


def _experiment(name: str, tmp_path: Path) -> SweepPlan:
    """An experiment's plan, its results root in ``tmp_path`` (nothing finished) and its data paths unchecked."""
    return load_spec(EXPERIMENTS / name, [f"output_dir={tmp_path}"], check_paths=False)


def _small(tmp_path: Path, **resources) -> SweepPlan:
    spec = {**SMALL, "output_dir": str(tmp_path), "resources": {**SMALL["resources"], **resources}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "compute.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


def _expected_train_flops(plan: SweepPlan) -> int:
    """Each pre-training run once, to the longest length asked of it (on its kept patches), plus every trial's
    fine-tuning (on all patches)."""
    flops = 0
    for pre in plan.pretrains.values():
        c = pre.config
        mc = c.model_config_resolved()
        kept = c.mask.keep_count(mc.grid)
        flops += max(pre.lengths.values()) * c.pretrain.batch_size * train_flops_per_image(mc, kept)
    for t in plan.trials:
        c = t.config
        mc = c.model_config_resolved()
        flops += c.finetune.steps * c.finetune.batch_size * train_flops_per_image(mc, mc.num_patches)
    return flops


@pytest.mark.parametrize("name", ["budget.yaml", "quickstart.yaml"])
def test_training_tflops_count_each_pretraining_once_and_every_finetuning(name, tmp_path):
    plan = _experiment(name, tmp_path)
    assert plan.pretrains  # both experiments pre-train
    assert totals(plan).train_tflops == _expected_train_flops(plan) / TERA


def test_a_shared_pretraining_is_counted_once(tmp_path):
    plan = _small(tmp_path)
    assert len(plan.trials) == 3 and len(plan.pretrains) == 1  # online and ema share it; the baseline has none
    mc = MODEL_PRESETS["uvit-digits"]
    assert mc.num_patches == 16
    pretrain = 60 * 16 * train_flops_per_image(mc, 8)  # 50% of the 16 patches kept
    finetune = 3 * 50 * 8 * train_flops_per_image(mc, 16)
    assert totals(plan).train_flops == pretrain + finetune == _expected_train_flops(plan)


def test_evaluation_tflops_are_sampling_plus_features_of_every_evaluation(tmp_path):
    plan = _small(tmp_path)
    mc = MODEL_PRESETS["uvit-digits"]
    sample = 5 * forward_flops(mc, mc.num_patches)  # one image: 5 DDIM steps on every patch
    features = feature_flops_per_image("digits-classifier")
    one = 48 * sample + 32 * features  # 48 drawn (the grid is bigger than the 32 scored), 32 scored
    final_extra = (2 - 1) * 32 * (sample + features) + 32 * features  # the second FID's pass, the floor's reals
    # evaluations at steps 20, 40, 60 of the pre-training and 20, 40, 50 of each fine-tuning; the last is final
    stage = 3 * one + final_extra
    runs = 1 + 3  # the shared pre-training once, three fine-tunings
    tot = totals(plan)
    assert tot.eval_flops == runs * stage
    assert tot.eval_tflops == runs * stage / TERA


def test_budget_gpu_hours_add_the_evaluation_at_the_unmasked_training_flop_rate(tmp_path):
    plan = _experiment("budget.yaml", tmp_path)
    tot = totals(plan)
    longest = [with_pretrain_steps(p.config, max(p.lengths.values())) for p in plan.pretrains.values()]
    assert [c.pretrain.steps for c in longest] == [80_000] * 3  # one run per seed serves 20k, 40k, 60k and 80k
    training_only = sum(stage_gpu_hours(c, "pretrain", c.effective_mask_rate) for c in longest)
    training_only += sum(stage_gpu_hours(t.config, "finetune", 0.0) for t in plan.trials)
    assert tot.train_gpu_hours == pytest.approx(training_only)
    assert tot.eval_gpu_hours > 0 and tot.gpu_hours > training_only
    assert tot.gpu_hours == pytest.approx(tot.train_gpu_hours + tot.eval_gpu_hours)
    # the reference GPU trains CelebA-64's U-ViT unmasked at 2798 images/s: that FLOP rate prices the sampling
    mc = MODEL_PRESETS["maskdm-celeba64"]
    flop_rate = train_flops_per_image(mc, mc.num_patches) * REFERENCE_IMAGES_PER_SECOND["maskdm-celeba64"][0.0]
    assert tot.eval_gpu_hours == pytest.approx(tot.eval_flops / flop_rate / 3600)


def test_finished_and_reused_stages_leave_the_totals(tmp_path, monkeypatch):
    plan = _small(tmp_path)
    before = totals(plan)
    finished = plan.trials[0]
    assert not finished.is_baseline
    monkeypatch.setattr(SweepPlan, "trial_finished", lambda self, trial_id: trial_id == finished.trial_id)
    (key,) = plan.pretrains
    _keep_milestone(plan, key, 60)  # the 60-step length is kept on disk: nothing to pre-train
    after = totals(plan)
    c = finished.config
    mc = c.model_config_resolved()
    pretrain = 60 * 16 * train_flops_per_image(mc, 8)
    assert after.pretrainings_reused == 1
    assert after.train_flops == before.train_flops - pretrain - 50 * 8 * train_flops_per_image(mc, 16)
    assert 0 < after.eval_flops < before.eval_flops
    assert 0 < after.train_gpu_hours < before.train_gpu_hours and 0 < after.eval_gpu_hours < before.eval_gpu_hours


def _keep_milestone(plan: SweepPlan, key: str, step: int) -> None:
    """What the trainer leaves for a kept length: the state (its content is not read by planning) and its record."""
    line = plan.layout.pretrain(key)
    line.milestones.mkdir(parents=True, exist_ok=True)
    line.milestone(step).write_bytes(b"state")
    line.milestone_info(step).write_text(f'{{"step": {step}}}')


def test_budget_trains_one_run_per_seed_for_all_four_lengths(tmp_path):
    tot = totals(_experiment("budget.yaml", tmp_path))
    assert (tot.pretrainings, tot.pretrain_steps_asked, tot.pretrain_steps_to_train) == (3, 600_000, 240_000)
    assert tot.pretrain_to_train.train_flops * 600 == tot.pretrain_asked.train_flops * 240
    assert tot.pretrain_to_train.train_gpu_hours < tot.pretrain_asked.train_gpu_hours


def test_plan_shows_each_run_with_its_lengths_and_what_sharing_saves(tmp_path):
    out = subprocess.run(
        [str(SCRIPT), "plan", str(EXPERIMENTS / "budget.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert out.returncode == 0, out.stderr
    assert "pre-training: 240,000 steps to train for 600,000 asked" in out.stdout
    assert "saves 360,000 steps" in out.stdout
    runs = [line for line in out.stdout.splitlines() if "80,000 steps to train" in line]
    assert len(runs) == 3, out.stdout
    for n in ("20,000", "40,000", "60,000", "80,000"):
        assert sum(f"{n} steps: to train" in line for line in out.stdout.splitlines()) == 3
    assert out.stdout.count("fine-tunes t-") == 12  # every pre-trained trial hangs under its length


def test_data_parallel_workers_all_wait_out_the_evaluation(tmp_path):
    """Training scales over the workers (same GPU-hours); rank 0 evaluates alone while all the trial's GPUs wait."""
    one, two = totals(_small(tmp_path / "one")), totals(_small(tmp_path / "two", workers=2))
    assert two.train_gpu_hours == pytest.approx(one.train_gpu_hours)
    assert two.eval_gpu_hours == pytest.approx(2 * one.eval_gpu_hours)
    assert (two.train_flops, two.eval_flops) == (one.train_flops, one.eval_flops)


def test_plan_command_shows_the_tflops_and_counts_evaluation(tmp_path):
    out = subprocess.run(
        [str(SCRIPT), "plan", str(EXPERIMENTS / "budget.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # undo rich's wrapping
    assert "TFLOPs" in text and "evaluation not counted" not in text
    assert "training TFLOPs" in text and "evaluation TFLOPs" in text
    assert " training + " in text and " evaluation, estimated from reference throughput" in text


# ------------------------------------------------------------------------------------------------ reference throughput
@pytest.mark.parametrize("preset, size", [("uvit-s2-cifar32", 32), ("maskdm-b256", 256)])
def test_the_estimate_trains_faster_per_image_the_more_is_masked(preset, size, tmp_path):
    """U-ViT-S/2 from its measured row (every rate measured one way: eager), another preset scaled by its FLOPs:
    dropping more patches never makes a training image slower, so a pre-training never costs more GPU-hours."""
    from maskdm_sweeps.sweep.estimate import images_per_second
    from maskdm_sweeps.testing import tiny_trial_config

    config = tiny_trial_config(
        data={"name": "cifar10", "image_size": size, "path": str(tmp_path), "download": True},
        model={"preset": preset},
        pretrain={"steps": 1000, "batch_size": 128},
    )
    assert config.model_config_resolved() == MODEL_PRESETS[preset]  # S/2: read from the table; B/4: scaled
    rates = [i / 20 for i in range(19)]  # 0 .. 0.9
    speeds = [images_per_second(config, r) for r in rates]
    hours = [stage_gpu_hours(config, "pretrain", r) for r in rates]
    assert speeds == sorted(speeds) and speeds[-1] > speeds[0]
    assert hours == sorted(hours, reverse=True) and hours[-1] < hours[0]
