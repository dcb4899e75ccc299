"""Datasets: images stored as uint8 ``(N, C, H, W)``, drawn as float batches in [-1, 1] on the training device.

``DataConfig`` (the spec's ``data:`` section) -> ``load_dataset`` (registry ``DATASETS``, subsets, content key)
-> ``ImageBatches`` (random batches from a caller-owned generator). No ray, mlflow or yaml here.
"""

from .._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use (see maskdm_sweeps._lazy)
_EXPORTS = {
    "batches": ["ImageBatches"],
    "cifar10": ["load_cifar10"],
    "config": ["DataConfig"],
    "convert": ["resize_uint8", "to_float", "to_uint8"],
    "digits": ["load_digits_images", "load_digits_uint8"],
    "files": ["DataError", "cache_dir"],
    "image_folder": ["CROPS", "load_image_folder"],
    "registry": ["DATASETS", "ImageData", "load_dataset", "subset_indices"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
