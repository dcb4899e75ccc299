"""U-ViT with token dropping, the MaskDM backbone (Bao et al. 2023; Lei et al. 2023), built on timm layers.

All inputs are tokens: a time token followed by the patch tokens. Learnable absolute positions are added to every
token *before* masked patch tokens are dropped (as in MAE), so each visible token keeps its position; the network
then runs on the ``1 + K`` kept tokens only. ``depth // 2`` in-blocks, a mid-block and ``depth // 2`` out-blocks, each
out-block fusing a long skip (last in, first out) with ``Linear(2D -> D)``.

Three optional parts serve the masking strategies that followed MaskDM (``maskdm/strategies.py``); each is absent
(0 blocks) in the plain U-ViT and, once present, stays part of the network in fine-tuning and sampling, where it runs
with nothing masked:

* ``mixer_depth`` blocks (deferred masking, Sehwag et al. 2024) run on the time token and EVERY patch token before
  any is dropped, so the kept tokens carry information from the dropped ones;
* ``decoder_depth`` blocks (MaskDiT, Zheng et al. 2024) run after the backbone on every position: the backbone's
  outputs go back to their positions, a learned mask token (plus a second set of positions) fills each dropped one,
  so the network predicts every patch. The decoder comes after the last out-block: the long skips stay inside the
  backbone, which only ever sees the kept tokens;
* routing (TREAD, Krause et al. 2025) needs no parameters: ``route_idx`` names the tokens that go THROUGH the routed
  span (in-blocks ``[route_from:]``, the mid-block and the out-blocks that mirror them); the others skip it and are
  put back at its end. The span is symmetric around the mid-block, so every long skip that an out-block in the span
  fuses comes from an in-block in the span, on the same routed subset of tokens;
* ``fusion_depth`` blocks (SPRINT, Park et al. 2026) after a sparse-dense residual fusion: the mixer's output on every
  token (SPRINT's dense shallow encoder, ``mixer_depth`` blocks) is kept aside; after the backbone (the sparse deep
  path, on the kept tokens) a fixed random mask token fills each dropped position, ``Linear(2D -> D)`` fuses the
  concatenation ``[sparse, dense]``, and the fusion blocks run on every position. SPRINT's code has no MaskDiT-style
  second set of positions; its mask token is not trained (``requires_grad=False``), here a buffer.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Attention, Mlp, trunc_normal_
from torch import nn

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
            assert skip is not None  # a block built with skip=True is always given one
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, D)
        x = x + self.attn(self.norm1(x))  # (B, L, D)
        return x + self.mlp(self.norm2(x))  # (B, L, D)


class UViT(nn.Module):
    """Epsilon-prediction U-ViT that can run on a subset of patch tokens.

    ``forward(x_t, t, keep_idx)`` sees nothing but the noisy image, the integer timestep and which patches are kept.
    """

    fusion_mask_token: torch.Tensor  # a buffer (SPRINT's fusion), registered when the network has a fusion

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
        block = {"dim": d, "num_heads": c.num_heads, "mlp_ratio": c.mlp_ratio, "qkv_bias": c.qkv_bias}
        if not 0 <= c.route_from <= c.depth // 2:
            raise ValueError(f"route_from must be in [0, {c.depth // 2}] (the in-blocks), got {c.route_from}")
        self.mixer_blocks = nn.ModuleList([block_layer(**block) for _ in range(c.mixer_depth)])
        self.in_blocks = nn.ModuleList([block_layer(**block) for _ in range(c.depth // 2)])
        self.mid_block = block_layer(**block)
        self.out_blocks = nn.ModuleList([block_layer(**block, skip=True) for _ in range(c.depth // 2)])
        self.decoder_blocks = nn.ModuleList([block_layer(**block) for _ in range(c.decoder_depth)])
        if c.decoder_depth:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, d))
            trunc_normal_(self.mask_token, std=0.02)
            trunc_normal_(self.decoder_pos_embed, std=0.02)
        self.fusion_blocks = nn.ModuleList([block_layer(**block) for _ in range(c.fusion_depth)])
        if c.fusion_depth:
            self.fusion = nn.Linear(2 * d, d)
            token = nn.init.normal_(torch.zeros(1, 1, d), std=0.02)  # SPRINT's init; the buffer is never trained
            self.register_buffer("fusion_mask_token", token)
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

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        route_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict eps.

        x_t: (B, C, H, W) noisy images; t: (B,) integer timesteps; keep_idx: (B, K) sorted visible patch indices, or
        None for all patches; route_idx: (B, R) sorted patch indices that go through the routed span (None: all).
        Returns (B, K, p*p*C) per-patch eps for the kept patches when keep_idx is given (with a decoder or a
        fusion: (B, N, p*p*C), every position), else (B, C, H, W).
        """
        c = self.config
        x = self.patch_embed(x_t)  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed[:, 1:]  # (B, N, D): positions before the drop
        time_token = self.time_embed(timestep_embedding(t, c.embed_dim)).unsqueeze(1)  # (B, 1, D)
        time_token = time_token.to(x.dtype) + self.pos_embed[:, :1]  # (B, 1, D); the time token is never masked
        x = torch.cat([time_token, x], dim=1)  # (B, 1+N, D)
        for blk in self.mixer_blocks:
            x = blk(x)  # (B, 1+N, D): deferred masking mixes every token before the drop
        dense = x if self.fusion_blocks else None  # (B, 1+N, D): SPRINT's dense shallow path
        if keep_idx is not None:
            if c.final_conv:
                raise ValueError("final_conv needs the whole image; it cannot run with dropped tokens")
            x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], keep_idx)], dim=1)  # (B, 1+K, D)

        x = self._backbone(x, route_idx)  # (B, 1+K, D)
        if self.decoder_blocks:
            x = self._decode(x, keep_idx)  # (B, 1+N, D)
        if dense is not None:
            x = self._fuse(x, dense, keep_idx)  # (B, 1+N, D)
        x = self.head(self.norm(x))  # (B, 1+K or 1+N, p*p*C)
        x = x[:, 1:]  # drop the time token
        if keep_idx is not None:
            return x
        img = unpatchify(x, c.patch_size, c.in_chans)  # (B, C, H, W)
        return self.final_layer(img)  # (B, C, H, W)

    def _backbone(self, x: torch.Tensor, route_idx: torch.Tensor | None) -> torch.Tensor:
        """In-blocks, mid-block, out-blocks with long skips; with ``route_idx``, only those tokens (and the time
        token) go through the routed span. x: (B, 1+K, D) -> (B, 1+K, D)."""
        n_in, start = len(self.in_blocks), self.config.route_from
        bypass = None
        skips = []
        for i, blk in enumerate(self.in_blocks):
            if route_idx is not None and i == start:
                bypass, x = x, torch.cat([x[:, :1], gather_tokens(x[:, 1:], route_idx)], dim=1)  # (B, 1+R, D)
            x = blk(x)  # (B, 1+K, D) or (B, 1+R, D) inside the span
            skips.append(x)
        if route_idx is not None and start == n_in:  # the span is the mid-block alone
            bypass, x = x, torch.cat([x[:, :1], gather_tokens(x[:, 1:], route_idx)], dim=1)  # (B, 1+R, D)
        x = self.mid_block(x)
        for i, blk in enumerate(self.out_blocks):
            # the span ends: routed tokens back in their places
            if bypass is not None and route_idx is not None and i == n_in - start:
                x, bypass = _put_back(bypass, x, route_idx), None  # (B, 1+K, D)
            x = blk(x, skips.pop())  # (B, 1+K, D) (or 1+R inside the span)
        if bypass is not None and route_idx is not None:  # the span reached the last out-block
            x = _put_back(bypass, x, route_idx)  # (B, 1+K, D)
        return x

    def _decode(self, x: torch.Tensor, keep_idx: torch.Tensor | None) -> torch.Tensor:
        """MaskDiT's decoder: every position, a dropped one as the mask token. x: (B, 1+K, D) -> (B, 1+N, D)."""
        b, n, d = x.shape[0], self.config.num_patches, x.shape[-1]
        if keep_idx is None:
            # nothing was dropped; the mask token joins the graph at zero weight, because data-parallel training
            # needs a gradient for every parameter at every step (MaskDiT's code adds 0 x its sum to the loss)
            full = x[:, 1:] + 0.0 * self.mask_token.to(x.dtype)  # (B, N, D)
        else:
            full = self.mask_token.to(x.dtype).expand(b, n, d).clone()  # (B, N, D)
            full.scatter_(1, keep_idx[..., None].expand(-1, -1, d), x[:, 1:])  # kept tokens back in place
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed.to(x.dtype)  # (B, 1+N, D)
        for blk in self.decoder_blocks:
            x = blk(x)  # (B, 1+N, D)
        return x

    def _fuse(self, x: torch.Tensor, dense: torch.Tensor, keep_idx: torch.Tensor | None) -> torch.Tensor:
        """SPRINT's residual fusion and decoder: the sparse path back in place (the fixed mask token in each dropped
        position), ``Linear(cat(sparse, dense))``, then the fusion blocks. x: (B, 1+K, D), dense: (B, 1+N, D) ->
        (B, 1+N, D)."""
        b, n, d = dense.shape[0], self.config.num_patches, dense.shape[-1]
        if keep_idx is None:
            sparse = x  # (B, 1+N, D): nothing was dropped
        else:
            full = self.fusion_mask_token.to(x.dtype).expand(b, n, d).clone()  # (B, N, D)
            full.scatter_(1, keep_idx[..., None].expand(-1, -1, d), x[:, 1:])  # kept tokens back in place
            sparse = torch.cat([x[:, :1], full], dim=1)  # (B, 1+N, D)
        x = self.fusion(torch.cat([sparse, dense.to(sparse.dtype)], dim=-1))  # (B, 1+N, D)
        for blk in self.fusion_blocks:
            x = blk(x)  # (B, 1+N, D)
        return x


def _put_back(full: torch.Tensor, routed: torch.Tensor, route_idx: torch.Tensor) -> torch.Tensor:
    """Token routing's re-insertion: the routed subset's outputs at their positions among the tokens that skipped.
    full: (B, 1+K, D) as they entered the span; routed: (B, 1+R, D); route_idx: (B, R) -> (B, 1+K, D)."""
    patches = full[:, 1:].clone()  # (B, K, D)
    patches.scatter_(1, route_idx[..., None].expand(-1, -1, full.shape[-1]), routed[:, 1:])
    return torch.cat([routed[:, :1], patches], dim=1)  # the time token went through the span


def build_model(preset: str, **overrides) -> UViT:
    """Build a :class:`UViT` from a registered preset, e.g. ``build_model("tiny", img_size=8)``."""
    return UViT(resolve_model_config(preset, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
