"""The dataset registry: ``DataConfig.name`` -> loader, and ``load_dataset`` which adds subsetting and a content key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cifar10 import batch_files, find_batches_dir, load_cifar10
from .config import DataConfig
from .digits import load_digits_uint8
from .files import content_key, file_identity
from .image_folder import load_image_folder, readable_image_files


@dataclass(frozen=True)
class ImageData:
    """A loaded dataset: the images the trainer samples from, and a key naming exactly these images.

    ``key`` changes whenever the pixels could (another file, split, size, crop or subset) and only then; the FID
    reference-statistics cache is indexed by it.
    """

    images: torch.Tensor  # uint8 (N, C, H, W), on the CPU
    name: str
    key: str

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_images(self) -> int:
        return self.images.shape[0]


def _path(cfg: DataConfig) -> Path:
    """``data.path``, which validation requires of the datasets read from files."""
    if cfg.path is None:
        raise ValueError(f"data.path is required for the {cfg.name} dataset")
    return cfg.path


def _size(cfg: DataConfig) -> int:
    """``data.image_size``, which validation fills in with the dataset's default."""
    if cfg.image_size is None:
        raise ValueError("data.image_size is not set: validate the DataConfig first")
    return cfg.image_size


DATASETS: dict[str, Callable[[DataConfig], torch.Tensor]] = {
    "digits": lambda cfg: load_digits_uint8(_size(cfg), cfg.split),
    "cifar10": lambda cfg: load_cifar10(_path(cfg), cfg.split, _size(cfg), cfg.download),
    "image_folder": lambda cfg: load_image_folder(_path(cfg), _size(cfg), cfg.crop, cfg.skip_unreadable),
}
"""Registry: the ``data.name`` values a spec may use -> loader returning uint8 ``(N, C, S, S)`` on the CPU."""


def _cifar10_files(cfg: DataConfig) -> list[Path]:
    batches_dir = find_batches_dir(_path(cfg), cfg.split)
    return batch_files(batches_dir, cfg.split) if batches_dir else []


SOURCE_FILES: dict[str, Callable[[DataConfig], list[Path]]] = {
    "digits": lambda cfg: [],  # embedded in scikit-learn, never changes
    "cifar10": _cifar10_files,
    "image_folder": lambda cfg: readable_image_files(_path(cfg), cfg.skip_unreadable, warn=False),
}
"""Registry: the files a dataset's pixels come from (their identity goes into ``ImageData.key``)."""


def subset_indices(num_images: int, fraction: float, max_images: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of the limited-data subset, or None when it is the whole set.

    ``floor(fraction * n)`` images (at least 1), capped at ``max_images``, taken from the front of a permutation
    seeded by ``seed``: the same arguments always give the same subset, and smaller subsets nest in larger ones.
    """
    count = max(1, int(round(fraction * num_images, 6)))  # round(): 0.29 * 100 must be 29, not 28.999...
    if max_images is not None:
        count = min(count, max_images)
    if count >= num_images:
        return None
    return np.sort(np.random.default_rng(seed).permutation(num_images)[:count])


def load_dataset(cfg: DataConfig) -> ImageData:
    """Load, subset and key the images ``cfg`` describes (uint8 ``(N, C, S, S)`` on the CPU)."""
    images = DATASETS[cfg.name](cfg)
    index = subset_indices(images.shape[0], cfg.fraction, cfg.max_images, cfg.subset_seed)
    if index is not None:
        images = images[torch.from_numpy(index)]
    # Keyed after loading: a cifar10 download only now created the files whose identity goes in.
    files = SOURCE_FILES[cfg.name](cfg)
    key = content_key(
        {
            "name": cfg.name,
            "path": str(cfg.path.resolve()) if cfg.path is not None else None,
            "files": file_identity(_path(cfg), files) if files else [],
            "split": cfg.split,
            "image_size": cfg.image_size,
            "crop": cfg.crop if cfg.name == "image_folder" else None,  # ignored by other datasets
            "subset": None if index is None else {"count": len(index), "seed": cfg.subset_seed},
        }
    )
    return ImageData(images=images.contiguous(), name=cfg.name, key=key)
