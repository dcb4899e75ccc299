"""The compute of a stage run in FLOPs, from the trial config alone: the same number on every machine.

Training counts the U-ViT's forward and backward (3 x forward, :func:`~maskdm_sweeps.maskdm.train_flops_per_image`)
on the tokens it actually processes: the time token plus the kept patches in pre-training, every patch in
fine-tuning. Evaluation counts the sampling (``sampling_steps`` forwards on every patch, per image drawn, the grid
included) plus the FID feature network on each scored image, the extra passes of ``eval.fid_repeats`` and the FID
floor's real images at the final evaluation. Elementwise work is left out (see :mod:`maskdm_sweeps.maskdm.flops`).

Both are exact functions of the step, so a resumed run counts the same as an uninterrupted one.
"""

from __future__ import annotations

from ..maskdm import eval_flops_per_image, train_flops_per_image
from ..maskdm.strategies import TokenCounts, token_counts
from .config import Stage, TrialConfig

TERA = 1e12


def kept_patches(config: TrialConfig, stage: Stage) -> int:
    """Patches the backbone sees per image in ``stage``: the mask's kept count in pre-training, all in fine-tuning."""
    return stage_tokens(config, stage).kept


def stage_tokens(config: TrialConfig, stage: Stage) -> TokenCounts:
    """Patch tokens of a training forward in ``stage``: the strategy's in pre-training (the backbone's kept ones and
    a routed span's), every patch in fine-tuning."""
    mc = config.model_config_resolved()
    if stage == "pretrain":
        return token_counts(config.mask, mc.grid)
    return TokenCounts(mc.num_patches, mc.num_patches)


def train_flops_per_step(config: TrialConfig, stage: Stage) -> int:
    """Training FLOPs of one optimizer step of ``stage`` (the global batch, all workers together)."""
    batch = (config.pretrain if stage == "pretrain" else config.finetune).batch_size
    tokens = stage_tokens(config, stage)
    return batch * train_flops_per_image(config.model_config_resolved(), tokens.kept, tokens.span)


def evaluation_steps(config: TrialConfig, stage: Stage, steps_done: int | None = None) -> list[int]:
    """The steps at which ``stage`` evaluates, up to ``steps_done`` (default: the whole stage): every
    ``eval.every_steps`` and the last step, as the trainer does; none when the stage is not evaluated."""
    total = (config.pretrain if stage == "pretrain" else config.finetune).steps
    if stage not in config.eval.stages or total == 0:
        return []
    every = config.eval.every_steps
    steps = set(range(every, total + 1, every)) if every > 0 else set()
    steps.add(total)
    done = total if steps_done is None else steps_done
    return sorted(s for s in steps if s <= done)


def evaluation_flops(config: TrialConfig, final: bool = False) -> int:
    """FLOPs of one evaluation: sampling ``max(num_samples, grid_size)`` images, the features of ``num_samples``;
    at the ``final`` one also ``fid_repeats - 1`` more scored passes (no grid) and the floor's real images."""
    from ..metrics import feature_flops_per_image  # the backends' module imports torch: only when counting eval

    e = config.eval
    sample = eval_flops_per_image(config.model_config_resolved(), e.sampling_steps)
    features = feature_flops_per_image(e.backend) if e.num_samples else 0
    flops = max(e.num_samples, e.grid_size) * sample + e.num_samples * features
    if final and e.num_samples:
        flops += (e.fid_repeats - 1) * e.num_samples * (sample + features) + e.num_samples * features
    return flops


def stage_flops(config: TrialConfig, stage: Stage, steps_done: int) -> tuple[int, int]:
    """``(train, eval)`` FLOPs of ``stage`` after ``steps_done`` steps (its evaluations at or before that step)."""
    total = (config.pretrain if stage == "pretrain" else config.finetune).steps
    evals = evaluation_steps(config, stage, steps_done)
    eval_flops = sum(evaluation_flops(config, final=s == total) for s in evals)
    return steps_done * train_flops_per_step(config, stage), eval_flops


def stage_tflops(config: TrialConfig, stage: Stage, steps_done: int) -> dict[str, float]:
    """The cost metrics of a stage run after ``steps_done`` steps: ``cost/train_tflops``, ``cost/eval_tflops``."""
    train, evaluation = stage_flops(config, stage, steps_done)
    return {"cost/train_tflops": train / TERA, "cost/eval_tflops": evaluation / TERA}
