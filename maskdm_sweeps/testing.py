"""Helpers for tests of this package and of code built on it (as optuna ships ``optuna.testing``)."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import step_files
from .trainer.config import TrialConfig
from .trainer.reporter import NullReporter


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


TINY_NETWORK_STRATEGIES: list[dict[str, Any]] = [
    {"strategy": "maskdit", "rate": 0.5, "decoder_depth": 1},
    {"strategy": "deferred", "rate": 0.75, "mixer_depth": 1},
    {"strategy": "routing", "rate": 0.5, "route_from": 0},
    {"strategy": "sprint", "rate": 0.75, "encoder_depth": 1, "decoder_depth": 1},
]
"""A ``mask`` section for each strategy that changes the network or the loss, with the smallest network parts: the
strategies the learning and two-worker tests train."""


def tiny_sweep_spec(
    name: str, output_dir: str | Path, sweep: dict | None = None, resources: dict | None = None, **base: Any
) -> dict:
    """A sweep spec (plain data, to dump as YAML) whose ``base`` is a CPU trial of the ``tiny`` preset on 8x8
    digits without FID; ``base`` keyword arguments are nested dicts merged into it, e.g.
    ``tiny_sweep_spec("s", tmp_path, {"baseline": True}, pretrain={"steps": 4000})``."""
    trial = _merge(
        {
            "data": {"name": "digits", "image_size": 8},
            "model": {"preset": "tiny"},
            "mask": {"strategy": "patch", "rate": 0.5},
            "pretrain": {"steps": 40, "batch_size": 8},
            "finetune": {"steps": 40, "batch_size": 8},
            "eval": {"num_samples": 0, "backend": "digits-classifier"},
            "runtime": {"device": "cpu", "log_every_steps": 10, "checkpoint_every_steps": 10},
        },
        base,
    )
    return {
        "name": name,
        "output_dir": str(output_dir),
        "base": trial,
        "sweep": sweep or {},
        "resources": {"gpus": 0, "cpus": 1, **(resources or {})},
    }


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
        "eval": {
            "num_samples": 0,
            "grid_size": 16,
            "sampling_steps": 5,
            "batch_size": 16,
            "backend": "digits-classifier",
        },
        "runtime": {"device": "cpu", "log_every_steps": 1, "checkpoint_every_steps": 10},
    }
    return TrialConfig.model_validate(_merge(base, overrides))


def write_png_with_a_broken_stream(path: Path, size: int = 4) -> Path:
    """A PNG whose chunks all carry valid CRCs around an IDAT payload that is no zlib stream: ``Image.verify()``
    passes it, only decoding its pixels fails (a damaged file that a checksum check does not catch)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(3 * size) for _ in range(size))  # each row: filter byte, then RGB
    stream = zlib.compress(rows)
    broken = stream[:2] + bytes(b ^ 0x5A for b in stream[2:])  # a valid zlib header, garbage after it
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", broken) + chunk(b"IEND", b""))
    return path


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
class crash_once:
    """``run_sweep``'s ``reporters`` that kill the process of each ``stage`` run once, at ``step``, on ``rank``."""

    stage: str
    step: int
    rank: int = 0

    def __call__(self, trial, stage: str, stage_dir: Path, rank: int) -> list:
        if stage != self.stage or rank != self.rank:
            return []
        return [CrashAt(self.step, exit_process=True, marker=Path(stage_dir) / ".crashed_once")]


class CorruptNewestCheckpoint(CrashAt):
    """Like :class:`CrashAt` (a process death at ``step``), having first cut the stage's newest checkpoint short:
    the retry must notice it and fall back to the one before."""

    def __init__(self, step: int, stage_dir: Path):
        super().__init__(step, exit_process=True, marker=Path(stage_dir) / ".corrupted_once")
        self.checkpoints = Path(stage_dir) / "checkpoints"

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if step >= self.step and self.marker is not None and not self.marker.exists():
            newest = step_files(self.checkpoints, ".pt")[-1]
            newest.write_bytes(newest.read_bytes()[:100])
        super().metrics(step, values)


@dataclass(frozen=True)
class corrupt_once:
    """``run_sweep``'s ``reporters`` that, once per ``stage`` run, cut its newest checkpoint short at ``step`` and
    kill the process."""

    stage: str
    step: int

    def __call__(self, trial, stage: str, stage_dir: Path, rank: int) -> list:
        return [CorruptNewestCheckpoint(self.step, stage_dir)] if stage == self.stage and rank == 0 else []


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
        data[start : start + len(raw)] = b"\xff" * len(raw)
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
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_args, **_kwargs: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda grad_out, q, k, v, *_args, **_kwargs: (
            sdpa_backward_flop_count(grad_out, q, k, v)
        ),
    }


def synthetic_trial(
    trial_id: str,
    arm: str,
    seed: int,
    fids: dict[int, float],
    pretrain_tflops: float = 0.0,
    tflops_per_step: float = 1.0,
    rate: float = 0.9,
    status: str = "finished",
    fid_floor: float = float("nan"),
) -> tuple[dict, list[dict]]:
    """A ``trials.parquet`` row and its ``eval/fid`` curve rows for a hand-made sweep: ``fids`` maps fine-tuning step
    -> FID (the last one is the final FID); the fine-tuning costs ``tflops_per_step`` per step (NaN: a sweep from
    before the TFLOPs columns) after a pre-training of ``pretrain_tflops`` (masked arms). Combine with
    :func:`synthetic_tables`."""
    import math

    from .results.columns import TRIAL_COLUMNS

    last = max(fids)
    masked = arm != "baseline"
    row = dict.fromkeys(TRIAL_COLUMNS) | {
        "sweep": "s",
        "trial_id": trial_id,
        "arm": arm,
        "label": arm,
        "stage": "finetune",
        "status": status,
        "mask_strategy": "patch" if masked else None,
        "mask_rate": rate if masked else math.nan,
        "effective_mask_rate": rate if masked else 0.0,
        "pretrain_steps": 10 if masked else 0,
        "finetune_steps": last,
        "steps_done": last,
        "seed": seed,
        "fid": fids[last],
        "fid_best": min(fids.values()),
        "loss_final": 0.1,
        "device": "cpu",
        "devices_per_trial": 1.0,
        "device_hours": 1.0,
        "gpu_hours": 0.0,
        "gpus_per_trial": 0.0,
        "wall_seconds": 1.0,
        "finetune_wall_seconds": 1.0,
        "pretrain_wall_seconds": 0.0,
        "pretrain_wall_seconds_share": 0.0,
        "pretrain_reused": False,
        "pretrain_shared_by": 1 if masked else 0,
        "fid_num_samples": 100,
        "fid_backend": "digits",
        "fid_floor": fid_floor,
        "pretrain_key": "k" if masked else None,
        "train_tflops": pretrain_tflops + last * tflops_per_step,
        "finetune_tflops": last * tflops_per_step,
        "pretrain_tflops": pretrain_tflops,
        "pretrain_tflops_share": pretrain_tflops,
        "eval_tflops": 0.0,
    }
    curve = [
        {"trial_id": trial_id, "stage": "finetune", "step": s, "metric": "eval/fid", "value": f}
        for s, f in fids.items()
    ]
    return row, curve


def synthetic_tables(*trials: tuple[dict, list[dict]]):
    """``(trials, curves)`` DataFrames, typed as the parquet files are, of :func:`synthetic_trial` results."""
    from .results.columns import CURVE_COLUMNS, TRIAL_COLUMNS, typed_frame

    return (
        typed_frame([t[0] for t in trials], TRIAL_COLUMNS),
        typed_frame([r for t in trials for r in t[1]], CURVE_COLUMNS),
    )
