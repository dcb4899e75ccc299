"""Images <-> patch tokens, in the one element order the model head and the loss target share.

A patch token is the ``p x p x C`` block flattened as ``(p1, p2, C)``, patches numbered row-major over the grid,
the same order as U-ViT's ``einops`` pattern ``B C (h p1) (w p2) -> B (h w) (p1 p2 C)``.
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, p*p*C)`` with ``N = (H/p) * (W/p)``."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p1, w, p2)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p1, p2, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """``(B, N, p*p*C) -> (B, C, H, W)`` for a square grid; the inverse of :func:`patchify`."""
    b, n, _ = tokens.shape
    p, g = patch_size, round(n**0.5)
    if g * g != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    x = tokens.reshape(b, g, g, p, p, channels)  # (B, h, w, p1, p2, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p1, w, p2)
    return x.reshape(b, channels, g * p, g * p)


def gather_tokens(tokens: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """Select the kept tokens: ``(B, N, D)`` with keep-indices ``(B, K)`` -> ``(B, K, D)``."""
    return torch.gather(tokens, 1, keep_idx[..., None].expand(-1, -1, tokens.shape[-1]))
