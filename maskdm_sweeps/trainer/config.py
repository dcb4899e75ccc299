"""The resolved, typed configuration of one trial: every setting that decides what a stage run computes.

Each field's description is its documentation (the README's field reference and the JSON Schema are generated from
these models). ``extra="forbid"`` everywhere: a typo is an error, never a silently ignored key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data.config import DataConfig
from ..maskdm import MODEL_PRESETS, UViTConfig, effective_mask_rate, resolve_model_config
from ..maskdm.strategies import build_strategy, network_overrides
from ..maskdm.masking import MaskStrategy

STAGES = ("pretrain", "finetune")
Stage = Literal["pretrain", "finetune"]

# What a pre-training ignores, by top-level section: it ends before fine-tuning and evaluates nothing that changes its
# weights, and runtime settings change speed, not results, except the numeric precision. The stage hash and the
# sweep's search (does a searched key change the pre-training?) both read this table.
PRETRAIN_IGNORED_SECTIONS = ("finetune", "eval", "runtime")
RESULT_CHANGING_RUNTIME = ("precision",)
# What a baseline (a trial without pre-training) ignores.
BASELINE_IGNORED_SECTIONS = ("mask", "pretrain")


def affects_pretraining(key: str) -> bool:
    """Whether a dotted trial-config key (``mask.rate``, ``eval.num_samples``) changes what a pre-training computes."""
    section, _, rest = key.partition(".")
    if section == "runtime":
        return rest.split(".")[0] in RESULT_CHANGING_RUNTIME
    return section not in PRETRAIN_IGNORED_SECTIONS


MAX_STEPS = 10**9
"""A bound on every step count: a billion optimizer steps is beyond any sweep (``1e15`` is a typo, not a plan)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # finite numbers only


# ----------------------------------------------------------------------------------------------------------- masks
class PatchMaskConfig(_Strict):
    """Patch-wise masking: ``int(rate * N)`` random patches are dropped."""

    strategy: Literal["patch"] = Field("patch", description="Masking strategy: random patches.")
    rate: float = Field(0.9, ge=0.0, lt=1.0, description="Nominal mask rate in [0, 1): the fraction of patches dropped.")


class BlockMaskConfig(_Strict):
    """Block-wise masking: ``int(rate * N) // block_size**2`` random blocks of patches are dropped."""

    strategy: Literal["block"] = Field("block", description="Masking strategy: random square blocks of patches.")
    rate: float = Field(0.9, ge=0.0, lt=1.0, description="Nominal mask rate in [0, 1); the effective rate is floored to whole blocks.")
    block_size: int = Field(2, ge=1, description="Block side in patches; must divide the patch grid.")


class CropMaskConfig(_Strict):
    """Cropping: one random ``crop_size x crop_size`` window of patches stays visible."""

    strategy: Literal["crop"] = Field("crop", description="Masking strategy: keep one random square window.")
    crop_size: int = Field(..., ge=1, description="Window side in patches; the mask rate is 1 - crop_size^2 / N.")


class MaskDiTConfig(_Strict):
    """MaskDiT (Zheng et al., TMLR 2024): the backbone sees the visible patches, a small decoder every position (a
    learned mask token in each dropped one); loss: denoising on the visible patches plus an MAE term on the masked
    ones. The decoder stays part of the network for fine-tuning, which runs it on every patch (MaskDiT's "unmasking
    tuning")."""

    strategy: Literal["maskdit"] = Field("maskdit", description="Masking strategy: MaskDiT's encoder-decoder.")
    rate: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of patches dropped before the backbone (the paper: 0.5).")
    decoder_depth: int = Field(2, ge=1, le=64, description="Transformer blocks of the decoder, on every position.")
    mae_coef: float = Field(0.1, ge=0.0, description="Weight of the MAE term: the masked patches' MSE against the "
                            "noisy input normalised per patch (the paper: 0.1; 0 leaves MaskDM's loss).")


class DeferredMaskConfig(_Strict):
    """Deferred masking (Sehwag et al. 2024, "Stretching Each Dollar"): a small patch-mixer runs on every token,
    then a share of them is dropped before the backbone; the loss covers the unmasked patches. The mixer stays part
    of the network for fine-tuning."""

    strategy: Literal["deferred"] = Field("deferred", description="Masking strategy: a patch-mixer, then the drop.")
    rate: float = Field(0.75, ge=0.0, lt=1.0, description="Fraction of patches dropped after the mixer (the paper: 0.75).")
    mixer_depth: int = Field(2, ge=1, le=64, description="Transformer blocks of the patch-mixer, on every token.")


class RoutingConfig(_Strict):
    """Token routing (TREAD, Krause et al., ICCV 2025): a random share of the patch tokens skips the middle of the
    backbone and is put back after it; nothing leaves the loss and no parameters are added."""

    strategy: Literal["routing"] = Field("routing", description="Masking strategy: tokens routed past the middle blocks.")
    rate: float = Field(0.5, ge=0.0, lt=1.0, description="Selection rate: the fraction of patch tokens that skip the routed span (the paper: 0.5).")
    route_from: int = Field(
        1, ge=0, le=64,
        description="The routed span: in-blocks from this index on, the mid-block and the out-blocks that mirror them "
        "(0: every block; depth // 2: the mid-block alone).")


MaskConfig = Annotated[Union[PatchMaskConfig, BlockMaskConfig, CropMaskConfig, MaskDiTConfig, DeferredMaskConfig,
                             RoutingConfig], Field(discriminator="strategy")]


def build_mask_from_config(mask) -> MaskStrategy:
    """The strategy a ``mask`` section names (``maskdm.strategies``), with its knobs."""
    return build_strategy(mask.strategy, **mask.model_dump(exclude={"strategy"}))


# ----------------------------------------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """The U-ViT: a registered preset; image size and channels come from the data."""

    preset: str = Field("uvit-s2-cifar32", description=f"Model preset, one of: {', '.join(MODEL_PRESETS)}.")
    patch_size: int | None = Field(None, ge=1, description="Override the preset's patch size (pixels).")
    time_mlp: bool = Field(False, description="U-ViT's optional MLP on the time embedding (MaskDM uses none).")
    final_conv: bool = Field(False, description="U-ViT's final 3x3 conv (not in MaskDM; unusable while tokens are dropped).")

    @model_validator(mode="after")
    def _known_preset(self) -> "ModelConfig":
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
        return self


class DiffusionConfig(_Strict):
    """The discrete DDPM forward process, shared by pre-training, fine-tuning and sampling."""

    schedule: Literal["linear", "cosine"] = Field("linear", description="Beta schedule: linear (1e-4..0.02) or cosine (s=0.008).")
    num_timesteps: int = Field(1000, ge=2, description="T, the number of diffusion steps.")


# ----------------------------------------------------------------------------------------------------------- stages
class _StageConfig(_Strict):
    steps: int = Field(0, ge=0, le=MAX_STEPS, description="Optimizer steps in this stage (0 skips the stage).")
    batch_size: int = Field(128, ge=1, description="Global batch size (images per optimizer step, over all workers).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (reached at the end of warmup).")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear LR warmup from 0 over this many steps.")
    lr_decay: Literal["none", "cosine", "linear"] = Field(
        "none", description="After warmup: 'none' keeps the peak rate (MaskDM's schedule), 'cosine' or 'linear' decay "
        "it to 0 at the stage's last step. A decay makes the first steps depend on the stage's length, so "
        "pre-trainings of different lengths are then trained apart instead of sharing one run.",
    )
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm to this value (None: no clipping).")
    betas: tuple[float, float] = Field((0.99, 0.99), description="AdamW betas (the official configs use 0.99, 0.99).")
    weight_decay: float = Field(0.03, ge=0, description="AdamW weight decay, on all parameters.")


class PretrainConfig(_StageConfig):
    """Masked pre-training (MDSM on the visible patches), with the trial's ``mask``."""

    batch_size: int = Field(256, ge=1, description="Global batch size (images per optimizer step, over all workers).")


class FinetuneConfig(_StageConfig):
    """Denoising fine-tuning (DSM, all patches visible); from scratch when there is no pre-training: the DDPM baseline."""  # noqa: E501 (the JSON schema's description: one line)

    steps: int = Field(1000, ge=1, le=MAX_STEPS, description="Optimizer steps of fine-tuning (of training, for the baseline).")
    init_from: Literal["online", "ema"] = Field("online", description="Which pre-trained weights to start from.")
    data: DataConfig | None = Field(
        None, description="Fine-tune on other data than pre-training (transfer; same resolution and channels). "
        "None: the trial's data."
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

    every_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Evaluate every this many steps (0: only at the end of a stage).")
    stages: list[Stage] = Field(["finetune"], description="Stages that are evaluated.")
    num_samples: int = Field(10_000, ge=0, description="Samples per FID (0 disables FID; the grid is still drawn).")
    batch_size: int = Field(500, ge=1, description="Sampling batch size.")
    sampler: Literal["ddim", "ddpm"] = Field("ddim", description="Reverse process used for sampling.")
    sampling_steps: int = Field(250, ge=1, le=100_000, description="Denoiser evaluations per sample.")
    eta: float = Field(1.0, ge=0, description="DDIM eta (1: stochastic as in the official evaluation; 0: deterministic).")
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
    fid_weights: Path | None = Field(None, description="Inception weights file (TorchScript or pytorch-fid state dict).")
    grid_size: int = Field(64, ge=1, description="Images in the PNG sample grid.")
    fid_repeats: int = Field(
        1, ge=1, description="FIDs computed at a stage's final evaluation, each from its own sampling noise; with 2 "
        "or more their standard deviation is reported as eval/fid_noise_std (the evaluation noise: how much one "
        "model's FID moves between sampling seeds). The reported eval/fid is always the first (fixed-noise) one.",
    )

    @field_validator("fid_weights")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().absolute()  # trial processes run elsewhere

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
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
        "default", description="torch.compile mode when compile is on: 'reduce-overhead' replays the forward and "
        "backward as CUDA graphs, which pays most at high mask rates, where a step is launch-bound (CUDA only).")
    log_every_steps: int = Field(50, ge=1, description="Report train/* metrics every this many steps (each report syncs).")
    checkpoint_every_steps: int = Field(1000, ge=1, description="Write a checkpoint every this many steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many most recent checkpoints to keep.")


class TrialConfig(_Strict):
    """One trial of a sweep: a pre-training stage (when ``pretrain.steps > 0``) then a fine-tuning stage."""

    seed: int = Field(0, description="Seed of weights, data order, noise and masks.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The network.")
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig, description="Noise schedule.")
    mask: MaskConfig = Field(default_factory=PatchMaskConfig, description="Mask used by pre-training.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Masked pre-training stage.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Fine-tuning stage.")
    ema: EMAConfig = Field(default_factory=EMAConfig, description="EMA of the weights.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation protocol.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Device, precision, logging cadence.")

    @model_validator(mode="after")
    def _finetune_data_matches(self) -> "TrialConfig":
        other = self.finetune.data
        if other is not None and (other.image_size, other.name == "digits") != (self.data.image_size, self.data.name == "digits"):
            raise ValueError("finetune.data must have the resolution and channels of data (the same network trains on both)")
        return self

    @model_validator(mode="after")
    def _mask_fits_the_grid(self) -> "TrialConfig":
        grid = self.model_config_resolved().grid
        if self.pretrain.steps > 0:
            try:
                build_mask_from_config(self.mask).keep_count(grid)
            except ValueError as err:
                raise ValueError(f"mask: {err}") from None
            if self.model.final_conv:
                raise ValueError("model.final_conv cannot be used with masked pre-training (tokens are dropped)")
            depth = MODEL_PRESETS[self.model.preset].depth
            if self.mask.strategy == "routing" and self.mask.route_from > depth // 2:
                raise ValueError(f"mask: route_from {self.mask.route_from} is past the {depth // 2} in-blocks of "
                                 f"{self.model.preset} (depth {depth}); use 0 to {depth // 2}")
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
        return effective_mask_rate(build_mask_from_config(self.mask), self.model_config_resolved().grid)

    def model_config_resolved(self) -> UViTConfig:
        """The U-ViT of this trial: the preset, fitted to the data, with the parts its masking strategy adds (a
        MaskDiT decoder, a patch-mixer) when it pre-trains; the baseline is the plain U-ViT."""
        overrides = {"img_size": self.image_size, "in_chans": self.channels, "time_mlp": self.model.time_mlp,
                         "final_conv": self.model.final_conv}
        if self.pretrain.steps > 0:
            overrides.update(network_overrides(build_mask_from_config(self.mask)))
        if self.model.patch_size:
            overrides["patch_size"] = self.model.patch_size
        return resolve_model_config(self.model.preset, **overrides)

    def stage_data(self, stage: Stage) -> DataConfig:
        return self.finetune.data if stage == "finetune" and self.finetune.data is not None else self.data

    def stages(self) -> list[Stage]:
        return ["pretrain", "finetune"] if self.pretrain.steps > 0 else ["finetune"]

    @property
    def pretrain_length_shared(self) -> bool:
        """Whether the pre-training's first n steps are the same whatever its length: then one run serves every
        length (a prefix), and its key leaves ``pretrain.steps`` out. A learning rate that decays to the stage's
        end depends on the length; warmup does not."""
        return self.pretrain.lr_decay == "none"

    def stage_hash(self, stage: Stage) -> str:
        """A key of every setting that affects what ``stage`` computes.

        Pre-trainings with equal keys are one run: the key is what the run is, not how long it runs (``pretrain.steps``
        is left out when :attr:`pretrain_length_shared`; each trial asks for its length, a milestone of the run).
        Fine-tuning keys include the pre-training settings and length (they start from it), except for the
        baseline, which ignores mask and pre-training settings altogether.
        """
        cfg = self.model_dump(mode="json")
        cfg["runtime"] = {k: cfg["runtime"][k] for k in RESULT_CHANGING_RUNTIME}  # the rest changes speed only
        if stage == "pretrain":
            cfg = {k: v for k, v in cfg.items() if k == "runtime" or k not in PRETRAIN_IGNORED_SECTIONS}
            if self.pretrain_length_shared:
                cfg["pretrain"] = {k: v for k, v in cfg["pretrain"].items() if k != "steps"}
        elif self.pretrain.steps == 0:
            cfg = {k: v for k, v in cfg.items() if k not in BASELINE_IGNORED_SECTIONS}
            cfg["finetune"] = {k: v for k, v in cfg["finetune"].items() if k != "init_from"}  # nothing to init from
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
