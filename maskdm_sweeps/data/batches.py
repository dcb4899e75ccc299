"""Random training batches straight from a uint8 image tensor: no DataLoader, no workers, no per-step Python loop.

A whole dataset of small images fits on the GPU as uint8 (CIFAR-10: 150 MB; CelebA-64: 2.5 GB), so a batch is one
index and one conversion on the device. What is drawn depends only on the caller's CPU generator, whose state the
trainer checkpoints: a resumed run draws the very batches it would have drawn.
"""

from __future__ import annotations

import torch

from .convert import to_float, to_uint8

__all__ = ["ImageBatches", "to_float", "to_uint8"]


class ImageBatches:
    """Uniformly random batches (with replacement) of uint8 ``images (N, C, H, W)``, as float in [-1, 1] on ``device``.

    The images live on ``device`` when they take at most ``max_device_bytes``; otherwise in pinned CPU memory when
    CUDA is available (fast, asynchronous copies of each batch), in plain CPU memory otherwise.
    """

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device | str = "cpu",
        hflip: bool = False,
        max_device_bytes: int = 4 * 2**30,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("no images to draw batches from")
        self.device = torch.device(device)
        self.hflip = hflip
        nbytes = images.numel() * images.element_size()
        if nbytes <= max_device_bytes:
            self.images = images.to(self.device)
            self.device = self.images.device  # "cuda" -> "cuda:0": on_device compares them
        elif torch.cuda.is_available():
            self.images = images.cpu().pin_memory()
        else:
            self.images = images.cpu()

    @property
    def on_device(self) -> bool:
        """True when the images are stored on the training device (no host-to-device copy per batch)."""
        return self.images.device == self.device

    def _to_device(self, small: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the device without a host sync: a copy from pageable memory waits for the GPU, one from
        pinned memory (PyTorch caches the pinned blocks) is queued behind the running kernels."""
        if self.device.type != "cuda":
            return small.to(self.device)
        return small.pin_memory().to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, batch_size: int, generator: torch.Generator, rows: slice | None = None) -> torch.Tensor:
        """float32 ``(batch_size, C, H, W)`` in [-1, 1] on the device; with ``rows``, only those rows of it.

        Indices, then flips (when ``hflip``), are drawn from ``generator``, which must be a CPU generator:
        its state alone decides the batch, on any device. ``rows`` is a data-parallel rank's share: all ranks draw
        the same ``batch_size`` indices and each gathers only its rows.
        """
        if generator.device.type != "cpu":
            raise ValueError(f"pass a CPU torch.Generator (its state is checkpointed), got one on {generator.device}")
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)  # (B,) on the CPU
        flip = torch.rand(batch_size, generator=generator) < 0.5 if self.hflip else None  # (B,)
        if rows is not None:
            idx = idx[rows]  # (b,) this rank's rows
            flip = None if flip is None else flip[rows]
        batch_size = idx.shape[0]
        if self.on_device:
            x = self.images[self._to_device(idx)]
        else:
            # gather into pinned memory (when the store is pinned) so the copy can overlap with compute
            picked = torch.empty(
                (batch_size, *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.images.is_pinned()
            )
            torch.index_select(self.images, 0, idx, out=picked)
            x = picked.to(self.device, non_blocking=True)
        if flip is not None:
            flip = self._to_device(flip)  # (b,)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return to_float(x)  # uint8 crossed the bus: 4x fewer bytes than float
