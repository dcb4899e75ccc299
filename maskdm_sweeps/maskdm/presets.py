"""The U-ViT's architecture as data: :class:`UViTConfig` and the named presets. Plain dataclasses, no torch, so
that reading and validating a spec (``maskdm-sweep validate``) needs neither torch nor timm."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class UViTConfig:
    """Architecture of one U-ViT; every field is a constructor argument of :class:`UViT`."""

    img_size: int = 32  # pixels on a side (square images)
    patch_size: int = 2  # pixels on a patch side; conv kernel = stride
    in_chans: int = 3  # image channels (1 for digits)
    embed_dim: int = 512  # token width D
    depth: int = 13  # depth//2 in-blocks + 1 mid-block + depth//2 out-blocks (12 and 13 both give 13)
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False  # the official MaskDM configs use none
    time_mlp: bool = False  # U-ViT's optional MLP on the time embedding; MaskDM configs use none
    final_conv: bool = False  # U-ViT's final 3x3 conv on the image; not in MaskDM, unusable with dropped tokens
    # parts a masking strategy adds (maskdm/strategies.py); 0 / the default: the plain U-ViT
    mixer_depth: int = 0  # deferred masking: blocks on every token before any is dropped
    decoder_depth: int = 0  # MaskDiT: blocks after the backbone on every position, dropped ones as a mask token
    route_from: int = 1  # token routing: routed tokens skip in-blocks [route_from:], the mid-block and their mirrors
    fusion_depth: int = 0  # SPRINT: blocks on every position after the sparse-dense fusion (mixer_depth: its encoder)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


MODEL_PRESETS: dict[str, UViTConfig] = {
    # the method's models (docs/method.md, "The network")
    "maskdm-celeba64": UViTConfig(img_size=64, patch_size=4, embed_dim=512, depth=13, num_heads=8),  # 44.3M
    "uvit-s2-cifar32": UViTConfig(img_size=32, patch_size=2, embed_dim=512, depth=13, num_heads=8),  # U-ViT-S/2
    "maskdm-b256": UViTConfig(img_size=256, patch_size=4, embed_dim=768, depth=12, num_heads=12),  # 102.4M
    # small presets for CPU runs on the embedded digits data
    "uvit-digits": UViTConfig(img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=5, num_heads=4),  # 0.27M
    "tiny": UViTConfig(img_size=16, patch_size=2, in_chans=1, embed_dim=32, depth=3, num_heads=2),
    "tiny-rgb": UViTConfig(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2),
}
"""Registry: the ``model.preset`` names a spec may use. Override any field with :func:`build_model`'s kwargs."""


def resolve_model_config(preset: str, **overrides) -> UViTConfig:
    """The preset's config with ``overrides`` applied (e.g. ``img_size``, ``in_chans`` from the dataset)."""
    try:
        base = MODEL_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}") from None
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise ValueError(f"unknown model fields {sorted(unknown)}")
    return replace(base, **overrides)
