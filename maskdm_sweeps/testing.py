"""Helpers for tests of this package and of code built on it (as optuna ships ``optuna.testing``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .trainer.config import TrialConfig
from .trainer.reporter import NullReporter


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_sweep_spec(name: str, output_dir: Path, sweep: dict | None = None, resources: dict | None = None,
                    **base: Any) -> dict:
    """A sweep spec (plain data, to dump as YAML) whose ``base`` is a CPU trial of the ``tiny`` preset on 8x8
    digits without FID; ``base`` keyword arguments are nested dicts merged into it, e.g.
    ``tiny_sweep_spec("s", tmp_path, {"baseline": True}, pretrain={"steps": 4000})``."""
    trial = _merge({
        "data": {"name": "digits", "image_size": 8},
        "model": {"preset": "tiny"},
        "mask": {"strategy": "patch", "rate": 0.5},
        "pretrain": {"steps": 40, "batch_size": 8},
        "finetune": {"steps": 40, "batch_size": 8},
        "eval": {"num_samples": 0, "backend": "digits-classifier"},
        "runtime": {"device": "cpu", "log_every_steps": 10, "checkpoint_every_steps": 10},
    }, base)
    return {"name": name, "output_dir": str(output_dir), "base": trial, "sweep": sweep or {},
            "resources": {"gpus": 0, "cpus": 1, **(resources or {})}}


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


class InjectedFault(RuntimeError):
    """What a :class:`CrashAt` reporter raises: a simulated crash of the training process."""


class CrashAt(NullReporter):
    """A reporter that crashes the stage at its first report at or after ``step`` (put it first in line, so no
    other reporter sees that step). ``exit_process``: die as a crashed worker does (``os._exit(17)``) instead of
    raising :class:`InjectedFault`. ``marker``: a file that, once written, disarms it (so a retry runs through)."""

    def __init__(self, step: int, exit_process: bool = False, marker: Path | None = None):
        self.step, self.exit_process, self.marker = step, exit_process, marker

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if step < self.step or (self.marker is not None and self.marker.exists()):
            return
        if self.marker is not None:
            self.marker.touch()
        if self.exit_process:
            os._exit(17)  # a real process death: no cleanup, no finally, as a killed GPU worker
        raise InjectedFault(f"injected fault at step {step}")


@dataclass(frozen=True)
class crash_once:  # noqa: N801 (used like a function: run_sweep(plan, reporters=crash_once("finetune", 17)))
    """``run_sweep``'s ``reporters`` that kill the process of each ``stage`` run once, at ``step``, on ``rank``."""

    stage: str
    step: int
    rank: int = 0

    def __call__(self, trial, stage: str, stage_dir: Path, rank: int) -> list:
        if stage != self.stage or rank != self.rank:
            return []
        return [CrashAt(self.step, exit_process=True, marker=Path(stage_dir) / ".crashed_once")]


def corrupt_state_file(path: Path, how: str) -> None:
    """Damage a checkpoint or milestone file as a failing disk or a careless copy does: a few bits of its largest
    weight ``flipped`` (it still loads), ``truncated`` to half its size, or that weight overwritten with ``garbage``
    (0xFF bytes: NaN; it still loads)."""
    import torch

    path = Path(path)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
        return
    weights = torch.load(path, weights_only=True)["model"]
    raw = max(weights.values(), key=lambda t: t.numel()).contiguous().numpy().tobytes()
    start = data.find(raw)  # stored uncompressed: the weight's bytes as they are in memory
    if how == "flipped":
        for i in (start + 5, start + len(raw) // 2, start + len(raw) - 3):
            data[i] ^= 0x10
    elif how == "garbage":
        data[start: start + len(raw)] = b"\xff" * len(raw)
    else:
        raise ValueError(f"unknown damage {how!r}: flipped, truncated or garbage")
    path.write_bytes(data)


def flop_counter_cpu_attention() -> dict:
    """``custom_mapping`` for ``torch.utils.flop_counter.FlopCounterMode``: torch's own SDPA formulas for the CPU
    flash-attention kernel, which the counter has none for (without it, attention counts 0 FLOPs on a CPU)."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v),
    }


def synthetic_trial(trial_id: str, arm: str, seed: int, fids: dict[int, float], pretrain_tflops: float = 0.0,
                    tflops_per_step: float = 1.0, rate: float = 0.9, status: str = "finished",
                    fid_floor: float = float("nan")) -> tuple[dict, list[dict]]:
    """A ``trials.parquet`` row and its ``eval/fid`` curve rows for a hand-made sweep: ``fids`` maps fine-tuning step
    -> FID (the last one is the final FID); the fine-tuning costs ``tflops_per_step`` per step (NaN: a sweep from
    before the TFLOPs columns) after a pre-training of ``pretrain_tflops`` (masked arms). Combine with
    :func:`synthetic_tables`."""
    import math

    from .results.columns import TRIAL_COLUMNS

    last = max(fids)
    masked = arm != "baseline"
    row = {c: None for c in TRIAL_COLUMNS} | {
        "sweep": "s", "trial_id": trial_id, "arm": arm, "label": arm, "stage": "finetune", "status": status,
        "mask_strategy": "patch" if masked else None, "mask_rate": rate if masked else math.nan,
        "effective_mask_rate": rate if masked else 0.0, "pretrain_steps": 10 if masked else 0,
        "finetune_steps": last, "steps_done": last, "seed": seed, "fid": fids[last], "fid_best": min(fids.values()),
        "loss_final": 0.1, "device": "cpu", "devices_per_trial": 1.0, "device_hours": 1.0, "gpu_hours": 0.0,
        "gpus_per_trial": 0.0, "wall_seconds": 1.0, "finetune_wall_seconds": 1.0, "pretrain_wall_seconds": 0.0,
        "pretrain_wall_seconds_share": 0.0,
        "pretrain_reused": False, "pretrain_shared_by": 1 if masked else 0, "fid_num_samples": 100,
        "fid_backend": "digits", "fid_floor": fid_floor, "pretrain_key": "k" if masked else None,
        "train_tflops": pretrain_tflops + last * tflops_per_step, "finetune_tflops": last * tflops_per_step,
        "pretrain_tflops": pretrain_tflops, "pretrain_tflops_share": pretrain_tflops, "eval_tflops": 0.0,
    }
    curve = [{"trial_id": trial_id, "stage": "finetune", "step": s, "metric": "eval/fid", "value": f}
             for s, f in fids.items()]
    return row, curve


def synthetic_tables(*trials: tuple[dict, list[dict]]):
    """``(trials, curves)`` DataFrames, typed as the parquet files are, of :func:`synthetic_trial` results."""
    from .results.columns import CURVE_COLUMNS, TRIAL_COLUMNS, typed_frame

    return (typed_frame([t[0] for t in trials], TRIAL_COLUMNS),
            typed_frame([r for t in trials for r in t[1]], CURVE_COLUMNS))
