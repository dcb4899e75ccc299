"""Rough cost of a plan: training images/s per preset and mask rate on a reference GPU, hence GPU-hours.

The table holds measured reference numbers (NVIDIA H200, bf16, batch 128; docs/design.md, "Reference throughput");
presets not in it are scaled from U-ViT-S/2 by their training FLOPs per image, counted exactly from the model's
shapes (``maskdm.flops``). Evaluation is priced by its exact FLOPs (``trainer.compute``) at the FLOP rate training
achieves unmasked (:func:`training_flop_rate`). A plan's figure is an estimate for budgeting, not a measurement.
"""

from __future__ import annotations

import numpy as np
import torch

from ..maskdm import MODEL_PRESETS, UViTConfig, count_parameters, train_flops_per_image
from ..maskdm.model import UViT
from ..trainer.compute import stage_flops, train_flops_per_step
from ..trainer.config import Stage, TrialConfig

REFERENCE_GPU = "NVIDIA H200"
# One row per preset, every figure of a row measured the same way: eager (no torch.compile, the trainer's default
# ``runtime.compile: false``), from the reference table of docs/design.md. (Compiled figures were measured at mask
# 0 and 0.9 only; mixed into a row, they made S/2 slower at 0.5 than at 0.) S/4 at 64 px is measured slower at 0.9
# than at 0.5: its eager step is launch-bound there, and the table keeps the measurement.
REFERENCE_IMAGES_PER_SECOND: dict[str, dict[float, float]] = {
    "uvit-s2-cifar32": {0.0: 2801.0, 0.5: 4083.0, 0.9: 4958.0},
    "maskdm-celeba64": {0.0: 2798.0, 0.5: 5030.0, 0.9: 4831.0},
}
_PARAMS: dict[UViTConfig, int] = {}


def parameter_count(mc: UViTConfig) -> int:
    """Parameters of the U-ViT ``mc`` (cached; built on the meta device, so nothing is allocated)."""
    if mc not in _PARAMS:
        with torch.device("meta"):  # count without allocating
            _PARAMS[mc] = count_parameters(UViT(mc))
    return _PARAMS[mc]


def kept_patches(mc: UViTConfig, effective_rate: float) -> int:
    """Visible patches K of ``mc`` at an effective mask rate, which is exactly ``1 - K / N``."""
    return round(mc.num_patches * (1 - effective_rate))


def flops_per_image(mc: UViTConfig, effective_rate: float) -> float:
    """Training FLOPs per image (forward + backward = 3 x forward), counted exactly from the shapes of ``mc``.

    See ``maskdm.flops.train_flops_per_image``: the network sees the time token and the visible patches.
    """
    return float(train_flops_per_image(mc, kept_patches(mc, effective_rate)))


def images_per_second(config: TrialConfig, effective_rate: float) -> float:
    """Training images/s of ``config`` at an effective mask rate on the reference GPU (interpolated in the table,
    else scaled from U-ViT-S/2 by FLOPs per image, at most 2x faster). A strategy the table did not measure
    (one that adds network parts or routes tokens: MaskDiT, deferred masking, routing, SPRINT) is scaled by its exact
    FLOPs per image from the unmasked reference."""
    preset = config.model.preset
    measured = effective_rate == 0 or config.mask.plain_network  # the table measured MaskDM's token dropping
    if preset in REFERENCE_IMAGES_PER_SECOND and config.model_config_resolved() == MODEL_PRESETS[preset] and measured:
        table = REFERENCE_IMAGES_PER_SECOND[preset]
        rates = sorted(table)
        return float(np.interp(effective_rate, rates, [table[r] for r in rates]))
    ref = "uvit-s2-cifar32"
    mc = config.model_config_resolved()
    per_image = (
        flops_per_image(mc, effective_rate)
        if measured
        else train_flops_per_step(config, "pretrain") / config.pretrain.batch_size
    )
    speedup = flops_per_image(MODEL_PRESETS[ref], 0.0) / per_image
    # small or heavily masked steps are launch-bound on a GPU: fewer FLOPs buy at most 2x (measured: 10x -> 1.7x)
    return REFERENCE_IMAGES_PER_SECOND[ref][0.0] * min(speedup, 2.0)


def stage_gpu_hours(config: TrialConfig, stage: str, effective_rate: float) -> float:
    """GPU-hours of training a whole ``stage`` on one reference GPU (steps x batch / images/s); no evaluation."""
    s = config.pretrain if stage == "pretrain" else config.finetune
    seconds = s.steps * s.batch_size / images_per_second(config, effective_rate)
    return seconds / 3600.0


def training_flop_rate(config: TrialConfig) -> float:
    """FLOP/s the reference GPU achieves training ``config``'s network unmasked: training FLOPs per image at mask 0
    x reference images/s at mask 0 (the full-token step, the one closest to sampling's)."""
    return flops_per_image(config.model_config_resolved(), 0.0) * images_per_second(config, 0.0)


def stage_eval_flops(config: TrialConfig, stage: Stage) -> int:
    """FLOPs of all the evaluations of a whole ``stage`` (sampling, FID features, the final one's extra passes and
    the FID floor; exact, see ``trainer.compute``); 0 when the stage is not evaluated."""
    steps = (config.pretrain if stage == "pretrain" else config.finetune).steps
    return stage_flops(config, stage, steps)[1]


def stage_eval_gpu_hours(config: TrialConfig, stage: Stage) -> float:
    """GPU-hours of the evaluations of a whole ``stage`` on one reference GPU: FLOPs at :func:`training_flop_rate`.

    Assumption: sampling runs the same network forward on all patches in large batches, so the FLOP/s it achieves
    is taken equal to unmasked training's; the FID feature network's FLOPs (Inception-v3, the digits classifier)
    are counted at that same rate. Not measured: an estimate for budgeting, like the training figure.
    """
    return stage_eval_flops(config, stage) / training_flop_rate(config) / 3600.0
