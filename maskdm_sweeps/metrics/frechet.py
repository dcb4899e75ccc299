"""The Frechet distance between two Gaussians, and streaming feature statistics, all in float64 numpy.

``FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (Heusel et al. 2017). The trace of the matrix square
root is taken from the eigenvalues of the *symmetric* PSD matrix ``S1^(1/2) S2 S1^(1/2)``, which is similar to
``S1 S2`` and so has the same eigenvalues. ``numpy.linalg.eigh`` on a symmetric matrix is stable and never returns
complex parts, unlike ``scipy.linalg.sqrtm`` on the non-symmetric product (the usual source of "imaginary component"
warnings and of an extra ``eps * I`` fudge in other implementations).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix ``(D, D)``; eigenvalues below 0 (rounding) are clipped to 0."""
    eigvals, eigvecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^(1/2))`` for PSD ``(D, D)`` matrices, via ``eigh(S1^(1/2) S2 S1^(1/2))``."""
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``; means ``(D,)``, covs ``(D, D)``.

    Computed in float64 whatever the input dtype. Never negative (tiny negative rounding is clipped to 0).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian summary of a feature set: ``mean (D,)``, ``cov (D, D)`` (unbiased, like ``np.cov``), ``count``."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    @property
    def dims(self) -> int:
        return int(self.mean.shape[0])

    def save(self, path: Path, meta: dict[str, str | int | float] | None = None) -> None:
        """Write an ``.npz`` (``mean``, ``cov``, ``count``, ``meta`` as JSON) atomically: concurrent trials may race
        on a shared cache, and a reader must never see half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:  # a file handle: np.savez would append ".npz" to the tmp name
            np.savez(fh, mean=self.mean, cov=self.cov, count=np.int64(self.count), meta=json.dumps(meta or {}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(
                mean=data["mean"].astype(np.float64), cov=data["cov"].astype(np.float64), count=int(data["count"])
            )


class StatsAccumulator:
    """Streaming mean and covariance of ``(B, D)`` feature batches, in float64 sums and outer-product sums.

    Sums are taken around a shift (the first batch's mean): ``sum(x x^T) - n mu mu^T`` loses digits when the mean is
    large against the spread, and shifting by any value close to the mean removes that cancellation.
    """

    def __init__(self, dims: int):
        self.dims = dims
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dims, np.float64)
        self._outer = np.zeros((dims, dims), np.float64)

    def update(self, features) -> None:
        """Add a batch ``(B, D)`` (numpy array or torch tensor; converted to float64 on the CPU)."""
        if hasattr(features, "detach"):  # a torch tensor; avoids importing torch here
            features = features.detach().cpu().double().numpy()
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dims:
            raise ValueError(f"expected features (B, {self.dims}), got {x.shape}")
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
        centred = x - self._shift  # (B, D)
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.count += x.shape[0]

    def finalize(self) -> FeatureStats:
        """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (divisor ``count - 1``) of everything added."""
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        assert self._shift is not None  # set by the first non-empty batch
        mean_shifted = self._sum / self.count
        cov = (self._outer - self.count * np.outer(mean_shifted, mean_shifted)) / (self.count - 1)
        return FeatureStats(mean=self._shift + mean_shifted, cov=(cov + cov.T) / 2, count=self.count)
