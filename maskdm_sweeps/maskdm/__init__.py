"""The MaskDM method, pure torch: masks, the U-ViT backbone, diffusion. No I/O, no ray, mlflow or yaml."""

from .diffusion import (
    SAMPLERS,
    SCHEDULES,
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    add_noise,
    build_schedule,
    cosine_schedule,
    linear_schedule,
    mdsm_loss,
    sample_images,
)
from .flops import (
    backward_flops,
    eval_flops_per_image,
    forward_flops,
    forward_flops_breakdown,
    num_blocks,
    train_flops_per_image,
)
from .masking import MASK_STRATEGIES, BlockMask, CropMask, PatchMask, build_mask, effective_mask_rate
from .model import MODEL_PRESETS, UViT, UViTConfig, build_model, count_parameters, resolve_model_config
from .patches import gather_tokens, patchify, unpatchify

__all__ = [
    "SAMPLERS", "SCHEDULES", "DDIMSampler", "DDPMSampler", "NoiseSchedule", "add_noise", "build_schedule",
    "cosine_schedule", "linear_schedule", "mdsm_loss", "sample_images", "MASK_STRATEGIES", "BlockMask", "CropMask",
    "PatchMask", "build_mask", "effective_mask_rate", "MODEL_PRESETS", "UViT", "UViTConfig", "build_model",
    "count_parameters", "resolve_model_config", "gather_tokens", "patchify", "unpatchify", "backward_flops",
    "eval_flops_per_image", "forward_flops", "forward_flops_breakdown", "num_blocks", "train_flops_per_image",
]
