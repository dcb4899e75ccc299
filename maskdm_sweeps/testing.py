"""Helpers for tests of this package and of code built on it (as optuna ships ``optuna.testing``)."""

from __future__ import annotations

from typing import Any

from .trainer.config import TrialConfig


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_trial_config(**overrides: Any) -> TrialConfig:
    """A trial on 8x8 digits with the ``tiny`` preset that runs a few dozen CPU steps per second.

    Keyword arguments are nested dicts merged into the defaults, e.g.
    ``tiny_trial_config(pretrain={"steps": 20}, mask={"strategy": "patch", "rate": 0.5})``.
    """
    base = {
        "seed": 0,
        "data": {"name": "digits", "image_size": 8},
        "model": {"preset": "tiny"},
        "mask": {"strategy": "patch", "rate": 0.5},
        "pretrain": {"steps": 0, "batch_size": 32, "lr": 2e-3},
        "finetune": {"steps": 20, "batch_size": 32, "lr": 2e-3},
        "eval": {"num_samples": 0, "grid_size": 16, "sampling_steps": 5, "batch_size": 16, "backend": "digits-classifier"},
        "runtime": {"device": "cpu", "log_every_steps": 1, "checkpoint_every_steps": 10},
    }
    return TrialConfig.model_validate(_merge(base, overrides))
