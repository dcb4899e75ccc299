"""Feature extractors for FID, one registry entry each: the paper-grade Inception and a cheap in-domain one.

=====================  ====  ===================================================================================
backend                dims  what it is
=====================  ====  ===================================================================================
``inception``          2048  TF Inception-v3 (2015-12-05) pool3: the network every published FID uses
``digits-classifier``    64  a small CNN trained here on scikit-learn digits; NOT Inception, never quote it as FID
=====================  ====  ===================================================================================

Every backend takes float images ``(B, C, H, W)`` in [-1, 1], C = 1 or 3, any size (see ``preprocess``). The
backends do not import this module: they satisfy :class:`FeatureBackend` by shape, and the registry imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from .digits_classifier import DigitsClassifierBackend
from .inception import InceptionBackend


class FeatureBackend(Protocol):
    """Images in, one feature vector per image out."""

    name: str
    dims: int
    identity: str  # hash of the weights file or training recipe: part of every statistics cache key
    flops_per_image: int  # FLOPs of the feature network on one image (2 x MACs), for the evaluation's compute

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3, any H, W) -> float64 ``(B, dims)`` on the CPU."""
        ...


FID_BACKENDS: dict[str, Callable[..., FeatureBackend]] = {
    InceptionBackend.name: InceptionBackend,
    DigitsClassifierBackend.name: DigitsClassifierBackend,
}


def feature_flops_per_image(name: str) -> int:
    """FLOPs of backend ``name``'s network on one image, without building it (for plans and compute counts)."""
    return int(FID_BACKENDS[name].flops_per_image)  # type: ignore[attr-defined]


def build_fid_backend(
    name: str, weights: Path | str | None = None, device: str | torch.device = "cpu"
) -> FeatureBackend:
    """The backend registered as ``name`` (``weights``: a file to load instead of the default)."""
    if name not in FID_BACKENDS:
        raise ValueError(f"unknown FID backend {name!r}; choose one of {sorted(FID_BACKENDS)}")
    return FID_BACKENDS[name](weights=weights, device=device)
