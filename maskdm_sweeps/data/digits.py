"""scikit-learn's handwritten digits: 1797 grey 8x8 images that ship inside the wheel (no download).

The embedded default dataset for quick runs, tests and ``--smoke`` sweeps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .convert import resize_uint8

TEST_FRACTION = 0.2
"""Share of each digit class held out as the ``test`` split (stratified, ``random_state=0``: fixed forever)."""


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


def digits_split_indices(split: str) -> np.ndarray:
    """Sorted indices ``(n,)`` into the 1797 digits for ``"train"`` (1437) or ``"test"`` (360).

    A stratified ``train_test_split`` with ``random_state=0``: every run, machine and sweep sees the same split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train, test = train_test_split(np.arange(len(target)), test_size=TEST_FRACTION, random_state=0, stratify=target)
    chosen = {"train": train, "test": test}[split]
    return np.sort(chosen)


def load_digits_uint8(image_size: int = 16, split: str = "train") -> torch.Tensor:
    """One split of the digits as uint8 ``(n, 1, S, S)``, the storage format of every dataset.

    Grey level ``v`` in 0..16 becomes ``round(v * 255 / 16)``, so at ``image_size=8`` exactly 17 values occur;
    other sizes resize bilinearly in float and round.
    """
    from sklearn.datasets import load_digits

    levels = load_digits().images[digits_split_indices(split)]  # (n, 8, 8) float64 in 0..16
    images = torch.from_numpy(np.round(levels * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)  # (n, 1, 8, 8)
    return resize_uint8(images, image_size)
