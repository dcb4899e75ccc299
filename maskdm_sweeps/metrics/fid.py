"""FID from images: statistics of samples, reference statistics cached on disk, and the protocol record.

A FID number means nothing without how it was made (the method's evaluation protocol: 10k DDIM-250 samples against
the training folder is not comparable to 50k samples against precomputed statistics), so every number is meant to
travel with a :class:`FIDProtocol`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.files import cache_dir as default_cache_dir
from .backend import FeatureBackend
from .frechet import FeatureStats, StatsAccumulator, frechet_distance


def stats_of_images(
    images: torch.Tensor | Iterable[torch.Tensor], backend: FeatureBackend, batch_size: int = 256
) -> FeatureStats:
    """Feature statistics of images: one tensor ``(N, C, H, W)`` or an iterable of ``(B, C, H, W)`` batches.

    Float images are in [-1, 1]; uint8 images (0..255) are converted with ``x / 127.5 - 1``. An iterable lets a
    sampler stream its output without holding every sample in memory.
    """
    batches = _batches(images, batch_size) if isinstance(images, torch.Tensor) else images
    accumulator = StatsAccumulator(backend.dims)
    for batch in batches:
        accumulator.update(backend.features(_as_float(batch)))  # (B, dims) float64
    return accumulator.finalize()


def _batches(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    return (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images


def reference_key(dataset_key: str, backend: FeatureBackend, images_shape: tuple[int, ...]) -> str:
    """Content key of reference statistics: the dataset, the backend and its weights, the image count and size."""
    record = {
        "dataset": dataset_key,
        "backend": backend.name,
        "identity": backend.identity,
        "shape": list(images_shape),  # (N, C, H, W): a resized or subsetted dataset is another reference
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


def reference_stats_path(
    dataset_key: str, backend: FeatureBackend, images_shape: tuple[int, ...], cache_dir: Path | None = None
) -> Path:
    """Where :func:`reference_stats` keeps these statistics: ``<cache>/fid_stats/<backend>-<key>.npz``."""
    root = cache_dir if cache_dir is not None else default_cache_dir()
    return root / "fid_stats" / f"{backend.name}-{reference_key(dataset_key, backend, images_shape)}.npz"


def reference_stats(
    images_uint8: torch.Tensor,
    dataset_key: str,
    backend: FeatureBackend,
    cache_dir: Path | None = None,
    batch_size: int = 256,
) -> FeatureStats:
    """Statistics of the real images ``(N, C, H, W)`` uint8, computed once and then read from the cache.

    ``dataset_key`` names the data (e.g. ``"digits:train:16"``): it is trusted, not hashed from pixels, because
    hashing 50k images each time would cost as much as a cache miss. Change it whenever the images change.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise TypeError(f"expected uint8 images (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    path = reference_stats_path(dataset_key, backend, tuple(images_uint8.shape), cache_dir)
    if path.is_file():
        return FeatureStats.load(path)
    stats = stats_of_images(images_uint8, backend, batch_size)
    stats.save(
        path,
        meta={
            "dataset_key": dataset_key,
            "backend": backend.name,
            "identity": backend.identity,
            "shape": "x".join(map(str, images_uint8.shape)),
        },
    )
    return stats


def fid(sample_stats: FeatureStats, ref_stats: FeatureStats) -> float:
    """Frechet distance between two sets of feature statistics (same backend, or the number is meaningless)."""
    if sample_stats.dims != ref_stats.dims:
        raise ValueError(f"feature dims differ: {sample_stats.dims} vs {ref_stats.dims} (different backends?)")
    return frechet_distance(sample_stats.mean, sample_stats.cov, ref_stats.mean, ref_stats.cov)


WEIGHT_KINDS = ("ema", "online")


@dataclass(frozen=True)
class FIDProtocol:
    """How a FID number was made; log :meth:`as_params` beside every value."""

    num_samples: int
    sampler: str  # e.g. "ddim", "ddpm"
    sampling_steps: int
    eta: float
    weights: str  # "ema" or "online"
    reference: str  # dataset key or description of the reference set / statistics
    backend: str  # "inception" or "digits-classifier" (the latter is not a paper FID)
    # the sampler's timestep rule and eps-after-clipping rule ("trailing" and "raw": the official MaskDM evaluation);
    # DDPM samples as DDIM with eta 1, leading spacing and recomputed eps would, and is recorded so
    timestep_spacing: str = "trailing"
    eps_after_clip: str = "raw"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_KINDS:
            raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {self.weights!r}")
        if self.timestep_spacing not in ("trailing", "leading"):
            raise ValueError(f"timestep_spacing must be 'trailing' or 'leading', got {self.timestep_spacing!r}")
        if self.eps_after_clip not in ("raw", "recomputed"):
            raise ValueError(f"eps_after_clip must be 'raw' or 'recomputed', got {self.eps_after_clip!r}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 for a covariance, got {self.num_samples}")
        if self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")

    def as_params(self) -> dict[str, str | int | float]:
        """Flat ``fid_*`` parameters, e.g. ``{"fid_num_samples": 10000, "fid_sampler": "ddim", ...}``."""
        return {f"fid_{key}": value for key, value in asdict(self).items()}
