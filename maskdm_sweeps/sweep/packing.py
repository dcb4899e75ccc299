"""How many trials to pack on one GPU: a throughput rule from the benchmark table and a memory rule.

A small trial (small images, high mask rates, a small model) cannot fill a GPU: its step is launch-bound, and the
spec's fractional ``resources.gpus`` lets Ray run several such trials on one card. Two rules decide how many:

* **work**: a stage step of ``F`` FLOPs leaves the card idle when ``F`` is well below the reference step (U-ViT-S/2,
  32 px, batch 128, mask 0, which ``benchmarks/bench.py`` measured at 25-36% MFU on an H200); ``n`` trials are
  packed where ``n x F`` still stays within that reference step, ``n`` in {4, 2, 1} (the counts measured);
* **memory**: ``n x peak <= 0.9 x card memory``, with ``peak`` per trial = parameters x 22 bytes (fp32 weights 4,
  EMA 4, AdamW moments 8, gradients 4, bf16 weight copies under autocast 2) + activations (batch x (1 + visible
  tokens) x width x blocks x 48 bytes under bf16, 80 under fp32) + 1 GiB per process (CUDA context, workspaces,
  allocator slack).

Both rules are estimates for planning; the measured gain is the one packing row of ``MEASURED_PACKING``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..maskdm import MODEL_PRESETS, UViTConfig
from ..trainer.config import TrialConfig
from .estimate import flops_per_image, parameter_count

GIB = 2**30
DEFAULT_CARD_MEMORY_GIB = 80.0  # an H100 80GB; pass the card's own memory (an H200: 141)
MEMORY_HEADROOM = 0.9  # use at most 90% of the card: the allocator fragments and eval sampling needs room
PACKING_COUNTS = (4, 2, 1)  # the trial counts bench.py measured; more than 4 is untested

# Persistent bytes per parameter while training: fp32 weights 4 + EMA copy 4 + AdamW exp_avg and exp_avg_sq 8 +
# fp32 gradients 4 + the bf16 copies autocast makes of the weights for the step 2.
BYTES_PER_PARAMETER = 22
# Bytes the backward keeps per (token x width x block), by step precision. Measured on the CPU: the bytes of the
# tensors autograd saves for one forward + loss of UViT (saved_tensors_hooks, parameters excluded), difference
# between batch B and 2B, divided by B x (1 + K) x embed_dim x depth, for uvit-digits, uvit-s2-cifar32 and
# maskdm-celeba64 at mask 0 and 0.9: 36-42 under bf16 autocast, 68-74 under fp32. Rounded up for the transient
# gradient buffers of the backward.
ACTIVATION_BYTES_PER_TOKEN_WIDTH_BLOCK = {"bf16": 48, "fp32": 80}
# Fixed cost of each trial process on the card: a CUDA context (~0.5 GiB), cuBLAS workspaces, the data held on the
# device, allocator slack. An assumption, not a measurement.
PROCESS_OVERHEAD_BYTES = 1 * GIB

# Aggregate training images/s of n concurrent uvit-digits trials (8 px, batch 128, mask 0, eager, pre-training
# stage) on one NVIDIA H200, as plain processes sharing the card: the `packing` rows of
# benchmarks/results/2026-11-27-nvidia-h200-run2-trainer-packing.json, measured by
#   python benchmarks/bench.py --sections trainer,packing --packing-backend processes
MEASURED_PACKING_GPU = "NVIDIA H200"
MEASURED_PACKING: dict[int, float] = {1: 8001.6, 2: 16676.5, 4: 27017.5}

# The step that (about) fills the card: U-ViT-S/2 at 32 px, batch 128, all tokens (bench.py counted 9.37 TFLOP).
REFERENCE_STEP_PRESET, REFERENCE_STEP_BATCH = "uvit-s2-cifar32", 128


@dataclass(frozen=True)
class StageLoad:
    """What one stage run of a trial asks of a GPU: FLOPs per optimizer step and peak memory in bytes."""

    stage: str
    flops_per_step: float
    peak_bytes: float


@dataclass(frozen=True)
class PackingSuggestion:
    """Trials per GPU for a set of stage runs (the largest of them decides), and why.

    ``trials_per_gpu``: the suggestion (1, 2 or 4); ``gpus_per_trial``: the matching ``resources.gpus``;
    ``flops_per_step`` and ``peak_bytes``: of the largest stage run; ``fit_in_memory``: how many such runs fit the
    card under the memory rule (0: not even one); ``measured_speedup``: aggregate images/s of ``trials_per_gpu``
    packed trials over one alone in ``MEASURED_PACKING`` (None for 1).
    """

    trials_per_gpu: int
    gpus_per_trial: float
    flops_per_step: float
    peak_bytes: float
    fit_in_memory: int
    card_memory_gib: float
    measured_speedup: float | None


def reference_step_flops() -> float:
    """Training FLOPs of the step that about fills a GPU (U-ViT-S/2, batch 128, mask 0), estimated like any other."""
    return REFERENCE_STEP_BATCH * flops_per_image(MODEL_PRESETS[REFERENCE_STEP_PRESET], 0.0)


def parameter_memory_bytes(mc: UViTConfig) -> int:
    """Bytes the parameters hold while training (weights, EMA, AdamW states, gradients, bf16 copies)."""
    return parameter_count(mc) * BYTES_PER_PARAMETER


def activation_memory_bytes(mc: UViTConfig, batch: int, effective_rate: float, precision: str = "bf16") -> float:
    """Bytes of activations kept for the backward: batch x (1 + visible tokens) x width x blocks x a factor."""
    tokens = 1 + mc.num_patches * (1 - effective_rate)
    factor = ACTIVATION_BYTES_PER_TOKEN_WIDTH_BLOCK["fp32" if precision == "fp32" else "bf16"]
    return batch * tokens * mc.embed_dim * mc.depth * factor


def stage_load(config: TrialConfig, stage: str, effective_rate: float) -> StageLoad:
    """FLOPs per step and peak GPU memory of one stage ("pretrain" or "finetune") of a trial."""
    mc = config.model_config_resolved()
    batch = (config.pretrain if stage == "pretrain" else config.finetune).batch_size
    # precision "auto" is bf16 autocast on CUDA; fp16 keeps activations in 2 bytes like bf16
    activations = activation_memory_bytes(mc, batch, effective_rate, config.runtime.precision)
    peak = parameter_memory_bytes(mc) + activations + PROCESS_OVERHEAD_BYTES
    return StageLoad(stage, batch * flops_per_image(mc, effective_rate), peak)


def trial_loads(config: TrialConfig) -> list[StageLoad]:
    """The stage runs of one trial: its masked pre-training (if any) and its fine-tuning on all tokens."""
    loads = []
    if config.pretrain.steps > 0:
        loads.append(stage_load(config, "pretrain", config.effective_mask_rate))
    loads.append(stage_load(config, "finetune", 0.0))
    return loads


def trials_fitting_in_memory(peak_bytes: float, card_memory_gib: float = DEFAULT_CARD_MEMORY_GIB) -> int:
    """How many trials of ``peak_bytes`` each fit ``MEMORY_HEADROOM`` of the card (0: not even one)."""
    return math.floor(MEMORY_HEADROOM * card_memory_gib * GIB / peak_bytes)


def trials_the_work_allows(flops_per_step: float) -> int:
    """The most trials (of ``PACKING_COUNTS``) whose steps together stay within the step that fills the card."""
    return next(n for n in PACKING_COUNTS if n == 1 or n * flops_per_step <= reference_step_flops())


def measured_speedup(trials_per_gpu: int) -> float | None:
    """Aggregate images/s of ``trials_per_gpu`` packed small trials over one alone, as measured (None if not)."""
    if trials_per_gpu == 1 or trials_per_gpu not in MEASURED_PACKING:
        return None
    return MEASURED_PACKING[trials_per_gpu] / MEASURED_PACKING[1]


def suggest_packing(loads: list[StageLoad], card_memory_gib: float = DEFAULT_CARD_MEMORY_GIB) -> PackingSuggestion:
    """Trials per GPU for stage runs that share one ``resources.gpus``: the largest step and largest peak decide.

    n is the largest of 4, 2, 1 with ``n x FLOPs per step <= reference step`` and ``n x peak <= 0.9 x card``.
    """
    flops = max(load.flops_per_step for load in loads)
    peak = max(load.peak_bytes for load in loads)
    fit = trials_fitting_in_memory(peak, card_memory_gib)
    n = next(n for n in PACKING_COUNTS if n == 1 or n <= min(trials_the_work_allows(flops), fit))
    return PackingSuggestion(n, 1.0 / n, flops, peak, fit, card_memory_gib, measured_speedup(n))


def suggest_for_trial(config: TrialConfig, card_memory_gib: float = DEFAULT_CARD_MEMORY_GIB) -> PackingSuggestion:
    """Trials per GPU for one planned trial (its pre-training and fine-tuning stages)."""
    return suggest_packing(trial_loads(config), card_memory_gib)


def suggest_for_configs(
    configs: list[TrialConfig], card_memory_gib: float = DEFAULT_CARD_MEMORY_GIB
) -> PackingSuggestion:
    """Trials per GPU for a sweep's trials, which all run under the spec's one ``resources.gpus``."""
    return suggest_packing([load for c in configs for load in trial_loads(c)], card_memory_gib)


def trials_per_gpu_of(gpus: float) -> int:
    """How many trials Ray places on one GPU when each asks for ``gpus`` (< 1) of one."""
    return math.floor(1.0 / gpus + 1e-9)
