"""The resolved, typed configuration of one trial: every setting that decides what a stage run computes.

Each field's description is its documentation (the README's field reference and the JSON Schema are generated from
these models). ``extra="forbid"`` everywhere: a typo is an error, never a silently ignored key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data.config import DataConfig
from ..maskdm import MODEL_PRESETS, UViTConfig, effective_mask_rate, resolve_model_config
from ..maskdm.masking import PatchMask
from ..maskdm.strategies import MaskConfig

STAGES = ("pretrain", "finetune")
Stage = Literal["pretrain", "finetune"]

MAX_STEPS = 10**9
"""A bound on every step count: a billion optimizer steps is beyond any sweep (``1e15`` is a typo, not a plan)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # finite numbers only


# ----------------------------------------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """The U-ViT: a registered preset; image size and channels come from the data."""

    preset: str = Field("uvit-s2-cifar32", description=f"Model preset, one of: {', '.join(MODEL_PRESETS)}.")
    patch_size: int | None = Field(None, ge=1, description="Override the preset's patch size (pixels).")
    time_mlp: bool = Field(False, description="U-ViT's optional MLP on the time embedding (MaskDM uses none).")
    final_conv: bool = Field(
        False, description="U-ViT's final 3x3 conv (not in MaskDM; unusable while tokens are dropped)."
    )

    @model_validator(mode="after")
    def _known_preset(self) -> ModelConfig:
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
        return self


class DiffusionConfig(_Strict):
    """The discrete DDPM forward process, shared by pre-training, fine-tuning and sampling."""

    schedule: Literal["linear", "cosine"] = Field(
        "linear", description="Beta schedule: linear (1e-4..0.02) or cosine (s=0.008)."
    )
    num_timesteps: int = Field(1000, ge=2, description="T, the number of diffusion steps.")


# ----------------------------------------------------------------------------------------------------------- stages
class _StageConfig(_Strict):
    steps: int = Field(0, ge=0, le=MAX_STEPS, description="Optimizer steps in this stage (0 skips the stage).")
    batch_size: int = Field(128, ge=1, description="Global batch size (images per optimizer step, over all workers).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (reached at the end of warmup).")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear LR warmup from 0 over this many steps.")
    lr_decay: Literal["none", "cosine", "linear"] = Field(
        "none",
        description="After warmup: 'none' keeps the peak rate (MaskDM's schedule), 'cosine' or 'linear' decay "
        "it to 0 at the stage's last step. A decay makes the first steps depend on the stage's length, so "
        "pre-trainings of different lengths are then trained apart instead of sharing one run.",
    )
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the global gradient norm to this value (None: no clipping)."
    )
    betas: tuple[float, float] = Field((0.99, 0.99), description="AdamW betas (the official configs use 0.99, 0.99).")
    weight_decay: float = Field(0.03, ge=0, description="AdamW weight decay, on all parameters.")


class PretrainConfig(_StageConfig):
    """Masked pre-training (MDSM on the visible patches), with the trial's ``mask``."""

    batch_size: int = Field(256, ge=1, description="Global batch size (images per optimizer step, over all workers).")


class FinetuneConfig(_StageConfig):
    """Denoising fine-tuning (DSM, all patches visible); from scratch when there is no pre-training: the DDPM baseline."""  # noqa: E501 (the JSON schema's description: one line)

    steps: int = Field(
        1000, ge=1, le=MAX_STEPS, description="Optimizer steps of fine-tuning (of training, for the baseline)."
    )
    init_from: Literal["online", "ema"] = Field("online", description="Which pre-trained weights to start from.")
    data: DataConfig | None = Field(
        None,
        description="Fine-tune on other data than pre-training (transfer; same resolution and channels). "
        "None: the trial's data.",
    )


class EMAConfig(_Strict):
    """Exponential moving average of the weights, updated every step."""

    decay: float = Field(0.999, gt=0, lt=1, description="Target EMA decay (beta).")
    warmup: bool = Field(
        True,
        description="ema-pytorch warmup: a plain copy for 100 steps, then min(decay, 1 - (k - 100)^(-2/3)); "
        "False uses the plain decay from step 1.",
    )


class EvalConfig(_Strict):
    """Periodic evaluation: samples, a PNG grid and FID, with the protocol recorded beside every number."""

    every_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="Evaluate every this many steps (0: only at the end of a stage)."
    )
    stages: list[Stage] = Field(["finetune"], description="Stages that are evaluated.")
    num_samples: int = Field(10_000, ge=0, description="Samples per FID (0 disables FID; the grid is still drawn).")
    batch_size: int = Field(500, ge=1, description="Sampling batch size.")
    sampler: Literal["ddim", "ddpm"] = Field("ddim", description="Reverse process used for sampling.")
    sampling_steps: int = Field(250, ge=1, le=100_000, description="Denoiser evaluations per sample.")
    eta: float = Field(
        1.0, ge=0, description="DDIM eta (1: stochastic as in the official evaluation; 0: deterministic)."
    )
    timestep_spacing: Literal["trailing", "leading"] = Field(
        "trailing",
        description="DDIM timesteps: 'trailing' (the official MaskDM evaluation: int(linspace(-1, T-1, steps+1)) "
        "reversed, e.g. 999, 995, ..., 3 for 250 of 1000) or 'leading' (i * (T // steps), e.g. 996, ..., 0). "
        "The DDPM sampler ignores it.",
    )
    eps_after_clip: Literal["raw", "recomputed"] = Field(
        "raw",
        description="DDIM direction term after the predicted x0 is clipped to [-1, 1]: 'raw' keeps the network's eps "
        "(the official MaskDM evaluation), 'recomputed' derives eps from the clipped x0. The DDPM sampler ignores it.",
    )
    weights: Literal["ema", "online"] = Field("ema", description="Which weights sample.")
    backend: Literal["inception", "digits-classifier"] = Field(
        "inception",
        description="FID features: 'inception' (TF Inception-v3 pool3, the number papers quote) or "
        "'digits-classifier' (in-domain features for the digits data; not comparable to Inception FID).",
    )
    fid_weights: Path | None = Field(
        None, description="Inception weights file (TorchScript or pytorch-fid state dict)."
    )
    grid_size: int = Field(64, ge=1, description="Images in the PNG sample grid.")
    fid_repeats: int = Field(
        1,
        ge=1,
        description="FIDs computed at a stage's final evaluation, each from its own sampling noise; with 2 "
        "or more their standard deviation is reported as eval/fid_noise_std (the evaluation noise: how much one "
        "model's FID moves between sampling seeds). The reported eval/fid is always the first (fixed-noise) one.",
    )

    @field_validator("fid_weights")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().absolute()  # trial processes run elsewhere

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.num_samples == 1:
            raise ValueError("num_samples must be 0 (no FID) or at least 2 (a covariance needs two samples)")
        if self.backend == "inception" and self.num_samples > 0:
            from ..metrics import resolve_inception_weights

            resolve_inception_weights(self.fid_weights)  # fails now, not after hours of training
        return self


class RuntimeConfig(_Strict):
    """Where and how the stage runs; none of these change what is learned (except precision)."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; fp16 uses a loss scaler."
    )
    compile: bool = Field(False, description="torch.compile the model (static shapes: K is fixed per stage).")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default",
        description="torch.compile mode when compile is on: 'reduce-overhead' replays the forward and "
        "backward as CUDA graphs, which pays most at high mask rates, where a step is launch-bound (CUDA only).",
    )
    log_every_steps: int = Field(
        50, ge=1, description="Report train/* metrics every this many steps (each report syncs)."
    )
    checkpoint_every_steps: int = Field(1000, ge=1, description="Write a checkpoint every this many steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many most recent checkpoints to keep.")


class TrialConfig(_Strict):
    """One trial of a sweep: a pre-training stage (when ``pretrain.steps > 0``) then a fine-tuning stage."""

    seed: int = Field(0, description="Seed of weights, data order, noise and masks.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig, description="Noise schedule.")
    mask: MaskConfig = Field(default_factory=PatchMask, description="Mask used by pre-training.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Masked pre-training stage.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Fine-tuning stage.")
    ema: EMAConfig = Field(default_factory=EMAConfig, description="EMA of the weights.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation protocol.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Device, precision, logging cadence.")

    @model_validator(mode="after")
    def _finetune_data_matches(self) -> TrialConfig:
        other = self.finetune.data
        if other is not None and (other.image_size, other.name == "digits") != (
            self.data.image_size,
            self.data.name == "digits",
        ):
            raise ValueError(
                "finetune.data must have the resolution and channels of data (the same network trains on both)"
            )
        return self

    @model_validator(mode="after")
    def _mask_fits_the_grid(self) -> TrialConfig:
        grid = self.model_config_resolved().grid
        if self.pretrain.steps > 0:
            try:
                self.mask.check_fits(grid, MODEL_PRESETS[self.model.preset].depth, self.model.preset)
            except ValueError as err:
                raise ValueError(f"mask: {err}") from None
            if self.model.final_conv:
                raise ValueError("model.final_conv cannot be used with masked pre-training (tokens are dropped)")
        return self

    # -------------------------------------------------------------------------------------- derived quantities
    @property
    def image_size(self) -> int:
        assert self.data.image_size is not None  # DataConfig fills in the dataset's default
        return self.data.image_size

    @property
    def channels(self) -> int:
        return 1 if self.data.name == "digits" else 3

    @property
    def effective_mask_rate(self) -> float:
        """The share of patches pre-training really drops (the counting rule on this grid); 0 without pre-training."""
        if self.pretrain.steps == 0:
            return 0.0
        return effective_mask_rate(self.mask, self.model_config_resolved().grid)

    def model_config_resolved(self) -> UViTConfig:
        """The U-ViT of this trial: the preset, fitted to the data, with the parts its masking strategy adds (a
        MaskDiT decoder, a patch-mixer, SPRINT's encoder, fusion and decoder) when it pre-trains; the baseline is the
        plain U-ViT."""
        overrides = {
            "img_size": self.image_size,
            "in_chans": self.channels,
            "time_mlp": self.model.time_mlp,
            "final_conv": self.model.final_conv,
        }
        if self.pretrain.steps > 0:
            overrides.update(self.mask.network())
        if self.model.patch_size:
            overrides["patch_size"] = self.model.patch_size
        return resolve_model_config(self.model.preset, **overrides)

    def stage_data(self, stage: Stage) -> DataConfig:
        return self.finetune.data if stage == "finetune" and self.finetune.data is not None else self.data

    def stages(self) -> list[Stage]:
        return ["pretrain", "finetune"] if self.pretrain.steps > 0 else ["finetune"]
