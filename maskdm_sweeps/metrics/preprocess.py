"""What every feature backend does to its input before its network sees it.

Every backend takes float images ``(B, C, H, W)`` in [-1, 1], C = 1 or 3, any size, and first quantizes them to
the 256 levels a saved PNG would hold (samples and the uint8 reference set then go through identical pixels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def quantize_like_png(images: torch.Tensor) -> torch.Tensor:
    """float ``(B, C, H, W)`` in [-1, 1] -> float32 holding the integers 0..255 a saved PNG would hold.

    ``round((x + 1) * 127.5)`` clamped, the same rule as the uint8 conversion of the data module.
    """
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255)


def check_images(images: torch.Tensor) -> None:
    """Reject anything but float ``(B, C, H, W)`` with C = 1 or 3."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [-1, 1], got {images.dtype} (convert uint8 with x / 127.5 - 1)")


def batched_features(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, chunk: int) -> torch.Tensor:
    """Run ``embed`` over ``images`` ``chunk`` at a time (bounds activation memory); float64 ``(B, D)`` on the CPU."""
    with torch.inference_mode():
        parts = [embed(images[i : i + chunk]).double().cpu() for i in range(0, images.shape[0], chunk)]
    return torch.cat(parts)
