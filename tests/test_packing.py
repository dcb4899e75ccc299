"""Packing small trials on one GPU: the suggestion from the work and memory rules, and `plan`'s line about it."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from maskdm_sweeps.maskdm import MODEL_PRESETS, build_model
from maskdm_sweeps.sweep.packing import (
    BYTES_PER_PARAMETER,
    GIB,
    MEMORY_HEADROOM,
    parameter_memory_bytes,
    suggest_for_configs,
    suggest_for_trial,
)
from maskdm_sweeps.sweep.plan_view import packing_line
from maskdm_sweeps.sweepspec import load_spec
from maskdm_sweeps.testing import tiny_trial_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
SCRIPT = Path(sys.executable).with_name("maskdm-sweep")


def big_trial(folder: Path):
    """U-ViT-S/2 on 32 px RGB images, batch 256, no masking: a step that fills a GPU."""
    Image.new("RGB", (32, 32)).save(folder / "one.png")  # the config checks the folder holds images
    return tiny_trial_config(
        data={"name": "image_folder", "path": str(folder), "image_size": 32},
        model={"preset": "uvit-s2-cifar32"},
        mask={"strategy": "patch", "rate": 0.0},
        pretrain={"steps": 100, "batch_size": 256},
        finetune={"steps": 100, "batch_size": 256},
    )


def test_quickstart_trials_are_packed_several_per_gpu():
    plan = load_spec(QUICKSTART, check_paths=False)
    s = suggest_for_configs([t.config for t in plan.trials])
    assert s.trials_per_gpu > 1
    assert s.gpus_per_trial == pytest.approx(1 / s.trials_per_gpu)
    assert s.measured_speedup > 1.5  # the benchmark's 2- or 4-trial row
    assert s.trials_per_gpu * s.peak_bytes <= MEMORY_HEADROOM * s.card_memory_gib * GIB


def test_a_trial_that_fills_the_gpu_is_not_packed(tmp_path):
    config = big_trial(tmp_path)
    assert config.model_config_resolved() == MODEL_PRESETS["uvit-s2-cifar32"]
    s = suggest_for_trial(config)
    assert s.trials_per_gpu == 1
    assert s.gpus_per_trial == 1.0
    assert s.measured_speedup is None
    assert s.fit_in_memory >= 1  # it does fit; the work rule, not memory, keeps it alone


def test_memory_caps_the_trials_on_a_small_card():
    config = tiny_trial_config(
        model={"preset": "uvit-digits"},
        pretrain={"steps": 10, "batch_size": 128},
        mask={"strategy": "patch", "rate": 0.9},
    )
    assert suggest_for_trial(config).trials_per_gpu == 4
    peak_gib = suggest_for_trial(config).peak_bytes / GIB
    small_card = 2.5 * peak_gib / MEMORY_HEADROOM  # room for two trials, not four
    capped = suggest_for_trial(config, card_memory_gib=small_card)
    assert capped.fit_in_memory == 2
    assert capped.trials_per_gpu == 2
    tiny_card = 0.5 * peak_gib  # not even one fits: never suggest packing then
    assert suggest_for_trial(config, card_memory_gib=tiny_card).trials_per_gpu == 1


@pytest.mark.parametrize("preset", ["tiny", "uvit-digits"])
def test_parameter_memory_matches_a_count_of_a_real_model(preset):
    real = sum(p.numel() for p in build_model(preset).parameters())
    assert parameter_memory_bytes(MODEL_PRESETS[preset]) == real * BYTES_PER_PARAMETER


def test_plan_warns_when_fractional_gpus_overfill_the_card():
    plan = load_spec(QUICKSTART, ["resources.gpus=0.25"], check_paths=False)
    assert "fit in memory" in packing_line(plan)
    big = load_spec(ROOT / "experiments" / "mask_rate.yaml", ["resources.gpus=0.01"], check_paths=False)
    assert "warning" in packing_line(big) and "exceeds" in packing_line(big)


def test_plan_prints_the_packing_suggestion():
    out = subprocess.run([str(SCRIPT), "plan", str(QUICKSTART)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # rich wraps long lines at the terminal's width
    assert "packing:" in text and "per GPU (resources.gpus: 0.25)" in text
    whole = subprocess.run(
        [str(SCRIPT), "plan", str(ROOT / "experiments" / "mask_rate.yaml")], capture_output=True, text=True, cwd=ROOT
    )
    assert "packing: none, one trial per GPU" in " ".join(whole.stdout.split())
