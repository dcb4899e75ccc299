"""Datasets: images as float tensors in [-1, 1], shape (N, C, H, W)."""

from .digits import load_digits_images

__all__ = ["load_digits_images"]
