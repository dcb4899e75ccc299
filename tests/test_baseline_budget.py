"""The equal-compute baseline: its fine-tuning is as long as the training FLOPs of the most expensive arm, counted
independently here from the model's shapes; and the spec's ``report`` section is validated like every other field."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from maskdm_sweeps.maskdm import train_flops_per_image
from maskdm_sweeps.sweepspec import load_spec

SPEC = {
    "name": "budget",
    "base": {
        "data": {"name": "digits", "image_size": 8},
        "model": {"preset": "uvit-digits"},
        "mask": {"strategy": "patch", "rate": 0.9},
        "pretrain": {"steps": 800, "batch_size": 64},
        "finetune": {"steps": 400, "batch_size": 32},
        "eval": {"num_samples": 0, "backend": "digits-classifier"},
        "runtime": {"device": "cpu"},
    },
    "sweep": {"axes": {"mask.rate": [0.5, 0.9]}, "seeds": [0, 1], "baseline": "equal_compute"},
    "resources": {"gpus": 0, "cpus": 1},
}


def plan_of(tmp_path, spec: dict):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "output_dir": str(tmp_path / "results")}))
    return load_spec(path)


def test_an_equal_compute_baseline_trains_as_many_flops_as_the_most_expensive_arm(tmp_path):
    plan = plan_of(tmp_path, SPEC)
    baselines = [t for t in plan.trials if t.is_baseline]
    assert len(baselines) == 2 and {t.config.seed for t in baselines} == {0, 1}
    mc = baselines[0].config.model_config_resolved()  # 8x8 digits in 2x2 patches: 16 patches
    full = 32 * train_flops_per_image(mc, 16)  # a fine-tuning step
    # the 50% arm costs most: 800 steps of 64 images on 8 kept patches, then 400 fine-tuning steps
    arm = 800 * 64 * train_flops_per_image(mc, 16 - int(0.5 * 16)) + 400 * full
    cheaper = 800 * 64 * train_flops_per_image(mc, 16 - int(0.9 * 16)) + 400 * full
    assert arm > cheaper
    for b in baselines:
        steps = b.config.finetune.steps
        assert (steps - 1) * full < arm <= steps * full  # the fewest whole steps that reach the arm's compute
        assert b.config.pretrain.steps == 0


def test_baseline_true_keeps_the_arms_fine_tuning_length(tmp_path):
    plan = plan_of(tmp_path, {**SPEC, "sweep": {**SPEC["sweep"], "baseline": True}})
    assert {t.config.finetune.steps for t in plan.trials} == {400}


@pytest.mark.parametrize(
    "section, value, message",
    [
        ("report", {"target_fid": -3}, "target FIDs must be > 0"),
        ("report", {"target_fid": []}, "at least one value"),
        ("report", {"confidence": 1.5}, "less than 1"),
        ("sweep", {"baseline": "equal_flops"}, "equal_compute"),
    ],
)
def test_a_bad_report_or_baseline_setting_names_the_field_and_its_line(tmp_path, section, value, message):
    spec = {**SPEC, section: {**SPEC.get(section, {}), **value}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    field = f"{section}.{next(iter(value))}"
    line = next(
        i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(next(iter(value)) + ":")
    )
    run = subprocess.run(
        [sys.executable, "-m", "maskdm_sweeps.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 2, run.stderr
    assert field in run.stderr and f":{line}" in run.stderr and message in run.stderr, run.stderr


def test_spec_targets_reach_the_report_settings(tmp_path):
    from maskdm_sweeps.results.analysis import report_settings

    plan = plan_of(tmp_path, {**SPEC, "report": {"target_fid": [40, 30.5]}})
    settings = report_settings(plan.spec.model_dump(mode="json"))
    assert settings["targets"] == [40.0, 30.5] and settings["confidence"] == 0.9
    assert plan.spec.report.targets == [40.0, 30.5]
