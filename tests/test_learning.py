"""A real learning test: a tiny U-ViT trained by the shared trainer on the embedded digits lowers its loss."""

import pytest

from maskdm_sweeps.testing import tiny_trial_config
from maskdm_sweeps.trainer import JsonlReporter, fit, read_jsonl_metrics


@pytest.mark.parametrize("stage", ["finetune", "pretrain"], ids=["dsm", "mdsm-50"])
def test_tiny_model_learns_digits_in_a_few_hundred_cpu_steps(tmp_path, stage, monkeypatch):
    monkeypatch.setenv("MASKDM_CACHE", str(tmp_path / "cache"))
    steps = {"steps": 300, "batch_size": 64, "lr": 2e-3, "betas": (0.9, 0.999)}
    cfg = tiny_trial_config(pretrain=steps, finetune=steps, mask={"strategy": "patch", "rate": 0.5},
                            runtime={"log_every_steps": 10, "checkpoint_every_steps": 1000})
    fit(cfg, stage, tmp_path / stage, JsonlReporter(tmp_path / "m.jsonl"))
    losses = [v["train/loss"] for _, v in read_jsonl_metrics(tmp_path / "m.jsonl") if "train/loss" in v]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses  # mean of steps 291-300 vs mean of steps 1-10
