"""Conversions between the uint8 storage format and the float [-1, 1] format the model sees."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., C, H, W)`` in 0..255 -> float32 in [-1, 1] (``x / 127.5 - 1``), on the input's device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float ``(..., C, H, W)`` in [-1, 1] -> uint8 in 0..255, rounded and clipped (inverse of :func:`to_float`).

    Model samples overshoot [-1, 1] a little; clipping rather than failing is what FID and sample grids want.
    """
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def resize_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of uint8 ``(N, C, H, W)`` to ``(N, C, S, S)``, computed in float then rounded.

    ``antialias=True`` only matters when shrinking (it averages instead of skipping pixels); unchanged sizes
    return the input untouched.
    """
    if images.shape[-2:] == (image_size, image_size):
        return images
    resized = F.interpolate(
        images.float(), size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)
