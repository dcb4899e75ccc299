"""Datasets: images stored as uint8 ``(N, C, H, W)``, drawn as float batches in [-1, 1] on the training device.

``DataConfig`` (the spec's ``data:`` section) -> ``load_dataset`` (registry ``DATASETS``, subsets, content key)
-> ``ImageBatches`` (random batches from a caller-owned generator). No ray, mlflow or yaml here.
"""

from .batches import ImageBatches
from .cifar10 import load_cifar10
from .config import DataConfig
from .convert import resize_uint8, to_float, to_uint8
from .digits import load_digits_images, load_digits_uint8
from .files import cache_dir
from .image_folder import CROPS, load_image_folder
from .registry import DATASETS, ImageData, load_dataset, subset_indices

__all__ = [
    "DATASETS", "CROPS", "DataConfig", "ImageBatches", "ImageData", "cache_dir", "load_cifar10", "load_dataset",
    "load_digits_images", "load_digits_uint8", "load_image_folder", "resize_uint8", "subset_indices", "to_float",
    "to_uint8",
]
