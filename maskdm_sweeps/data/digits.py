"""scikit-learn's handwritten digits: 1797 grey 8x8 images that ship inside the wheel (no download).

The embedded default dataset for quick runs, tests and ``--smoke`` sweeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits_images(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as ``(images (1797, 1, S, S) float32 in [-1, 1], labels (1797,) int64)``.

    The 17 grey levels (0..16) map linearly to [-1, 1]; ``image_size`` other than 8 resizes bilinearly
    (16 gives an 8x8 patch grid at patch size 2, enough to mask 90% and keep 7 patches).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 8.0 - 1.0  # (1797, 1, 8, 8)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1), torch.from_numpy(bunch.target).long()
