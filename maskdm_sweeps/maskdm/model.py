"""U-ViT with token dropping, the MaskDM backbone (Bao et al. 2023; Lei et al. 2023), built on timm layers.

All inputs are tokens: a time token followed by the patch tokens. Learnable absolute positions are added to every
token *before* masked patch tokens are dropped (as in MAE), so each visible token keeps its position; the network
then runs on the ``1 + K`` kept tokens only. ``depth // 2`` in-blocks, a mid-block and ``depth // 2`` out-blocks, each
out-block fusing a long skip (last in, first out) with ``Linear(2D -> D)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from timm.layers import Attention, Mlp, trunc_normal_

from .patches import gather_tokens, unpatchify
from .presets import MODEL_PRESETS, UViTConfig, resolve_model_config  # noqa: F401 (the model's own names too)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, ``[cos, sin]`` halves as in U-ViT/ADM. t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class UViTBlock(nn.Module):
    """Pre-LayerNorm transformer block; with ``skip=True`` it first fuses a long skip: ``Linear(cat(x, skip))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        skip: bool = False,
        attn_layer: type[nn.Module] = Attention,
        mlp_layer: type[nn.Module] = Mlp,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, D)
        x = x + self.attn(self.norm1(x))  # (B, L, D)
        return x + self.mlp(self.norm2(x))  # (B, L, D)


class UViT(nn.Module):
    """Epsilon-prediction U-ViT that can run on a subset of patch tokens.

    ``forward(x_t, t, keep_idx)`` sees nothing but the noisy image, the integer timestep and which patches are kept.
    """

    def __init__(self, config: UViTConfig, block_layer: type[nn.Module] = UViTBlock):
        super().__init__()
        if config.img_size % config.patch_size:
            raise ValueError(f"img_size {config.img_size} is not divisible by patch_size {config.patch_size}")
        self.config = config
        c, d = config, config.embed_dim
        self.patch_embed = nn.Conv2d(c.in_chans, d, kernel_size=c.patch_size, stride=c.patch_size)
        self.time_embed = (
            nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d)) if c.time_mlp else nn.Identity()
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, d))  # time token + N patches
        block = dict(dim=d, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias)
        self.in_blocks = nn.ModuleList([block_layer(**block) for _ in range(c.depth // 2)])
        self.mid_block = block_layer(**block)
        self.out_blocks = nn.ModuleList([block_layer(**block, skip=True) for _ in range(c.depth // 2)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.patch_size**2 * c.in_chans)
        self.final_layer = nn.Conv2d(c.in_chans, c.in_chans, 3, padding=1) if c.final_conv else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps.

        x_t: (B, C, H, W) noisy images; t: (B,) integer timesteps; keep_idx: (B, K) sorted visible patch indices, or
        None for all patches. Returns (B, K, p*p*C) per-patch eps for the kept patches, or (B, C, H, W) when
        keep_idx is None.
        """
        c = self.config
        x = self.patch_embed(x_t)  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed[:, 1:]  # (B, N, D): positions before the drop
        if keep_idx is not None:
            if c.final_conv:
                raise ValueError("final_conv needs the whole image; it cannot run with dropped tokens")
            x = gather_tokens(x, keep_idx)  # (B, K, D)
        time_token = self.time_embed(timestep_embedding(t, c.embed_dim)).unsqueeze(1)  # (B, 1, D)
        time_token = time_token.to(x.dtype) + self.pos_embed[:, :1]  # (B, 1, D); the time token is never masked
        x = torch.cat([time_token, x], dim=1)  # (B, 1+K, D)

        skips = []
        for blk in self.in_blocks:
            x = blk(x)  # (B, 1+K, D)
            skips.append(x)
        x = self.mid_block(x)  # (B, 1+K, D)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())  # (B, 1+K, D)

        x = self.head(self.norm(x))  # (B, 1+K, p*p*C)
        x = x[:, 1:]  # (B, K, p*p*C): drop the time token
        if keep_idx is not None:
            return x
        img = unpatchify(x, c.patch_size, c.in_chans)  # (B, C, H, W)
        return self.final_layer(img)  # (B, C, H, W)


def build_model(preset: str, **overrides) -> UViT:
    """Build a :class:`UViT` from a registered preset, e.g. ``build_model("tiny", img_size=8)``."""
    return UViT(resolve_model_config(preset, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
