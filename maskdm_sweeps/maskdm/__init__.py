"""The MaskDM method, pure torch: masks, the U-ViT backbone, diffusion. No I/O, no ray, mlflow or yaml."""

from .._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (see maskdm_sweeps._lazy)
_EXPORTS = {
    "diffusion": [
        "SAMPLERS",
        "SCHEDULES",
        "DDIMSampler",
        "DDPMSampler",
        "NoiseSchedule",
        "add_noise",
        "build_schedule",
        "cosine_schedule",
        "linear_schedule",
        "mdsm_loss",
        "sample_images",
    ],
    "flops": [
        "backward_flops",
        "eval_flops_per_image",
        "forward_flops",
        "forward_flops_breakdown",
        "num_blocks",
        "train_flops_per_image",
    ],
    "masking": ["BlockMask", "CropMask", "MaskStrategy", "PatchMask", "TokenCounts", "effective_mask_rate"],
    "model": ["UViT", "build_model", "count_parameters"],
    "strategies": [
        "BASELINE_MASK_COLUMNS",
        "STRATEGIES",
        "DeferredMasking",
        "MaskConfig",
        "MaskDiT",
        "Sprint",
        "TokenRouting",
        "build_strategy",
        "maskdit_loss",
        "network_overrides",
        "strategy_from_columns",
        "token_counts",
        "training_loss",
    ],
    "patches": ["gather_tokens", "patchify", "unpatchify"],
    "presets": ["MODEL_PRESETS", "UViTConfig", "resolve_model_config"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
