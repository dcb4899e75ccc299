"""Mask strategies of MaskDM, as batched tensor functions on the training device.

Every strategy turns a patch grid of ``grid x grid`` patches (``N = grid**2``, numbered row-major) into sorted
*keep-indices* ``(B, K)``: the patches the network sees. ``K`` is the same for every sample of a batch (the token gather
needs it), and each sample draws its own mask from the passed ``torch.Generator``.

Counting rules follow the official code exactly (see ``docs/method.md``, "Masks and how many patches they hide"):

=========  ==================================  ==========================================================
strategy   masked count                        note
=========  ==================================  ==========================================================
patch      ``int(r * N)`` random patches       exact count
block      ``int(r * N) // b**2`` b x b blocks floor: 90% with b=4 on 16x16 masks 224/256 = 87.5%
crop       everything outside a c x c window   rate implied by c: ``1 - c**2 / N``
=========  ==================================  ==========================================================

torch is imported inside the samplers only: counting a mask's patches (what validating a spec needs) does not
need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch


class MaskStrategy(Protocol):
    """A way to choose the visible patches of a batch of images."""

    name: ClassVar[str]

    def keep_count(self, grid: int) -> int:
        """Number of visible patches K on a ``grid x grid`` patch grid (raises ValueError if impossible)."""
        ...

    def sample(self, batch_size: int, grid: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        """Sorted keep-indices ``(batch_size, K)``, int64, one fresh mask per sample."""
        ...


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mask rate must be in [0, 1), got {rate}")


def _random_subset(batch_size: int, population: int, count: int, generator: torch.Generator, device) -> torch.Tensor:
    """``(batch_size, count)`` distinct integers from ``[0, population)`` per row, unsorted.

    argsort of uniform noise gives a uniform random permutation per row, all rows in one kernel.
    """
    import torch  # lazily: see the module docstring
    noise = torch.rand(batch_size, population, generator=generator, device=device)  # (B, population)
    return noise.argsort(dim=1)[:, :count]  # (B, count)


@dataclass(frozen=True)
class PatchMask:
    """Patch-wise masking: ``int(rate * N)`` patches chosen uniformly at random are dropped."""

    rate: float
    name: ClassVar[str] = "patch"

    def __post_init__(self) -> None:
        _check_rate(self.rate)

    def keep_count(self, grid: int) -> int:
        n = grid * grid
        return n - int(self.rate * n)

    def sample(self, batch_size: int, grid: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
        keep = _random_subset(batch_size, grid * grid, self.keep_count(grid), generator, device)  # (B, K)
        return keep.sort(dim=1).values


@dataclass(frozen=True)
class BlockMask:
    """Block-wise masking: ``int(rate * N) // block_size**2`` random ``b x b`` blocks of patches are dropped."""

    rate: float
    block_size: int
    name: ClassVar[str] = "block"

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    def _blocks_per_side(self, grid: int) -> int:
        if grid % self.block_size:
            raise ValueError(
                f"block_size {self.block_size} does not divide the {grid}x{grid} patch grid "
                f"(choose a divisor of {grid})"
            )
        return grid // self.block_size

    def masked_blocks(self, grid: int) -> int:
        self._blocks_per_side(grid)
        return int(self.rate * grid * grid) // (self.block_size**2)

    def keep_count(self, grid: int) -> int:
        return grid * grid - self.masked_blocks(grid) * self.block_size**2

    def sample(self, batch_size: int, grid: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
        import torch  # lazily: see the module docstring
        b, side = self.block_size, self._blocks_per_side(grid)
        kept_blocks = side * side - self.masked_blocks(grid)
        blocks = _random_subset(batch_size, side * side, kept_blocks, generator, device)  # (B, kb)
        # top-left patch of each kept block, then every patch inside it
        corner = (blocks // side) * b * grid + (blocks % side) * b  # (B, kb)
        offs = torch.arange(b, device=device)
        within = (offs[:, None] * grid + offs[None, :]).reshape(-1)  # (b*b,)
        keep = (corner[:, :, None] + within[None, None, :]).reshape(batch_size, -1)  # (B, kb*b*b)
        return keep.sort(dim=1).values


@dataclass(frozen=True)
class CropMask:
    """Cropping: only one random ``crop_size x crop_size`` window of patches stays visible."""

    crop_size: int
    name: ClassVar[str] = "crop"

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")

    def keep_count(self, grid: int) -> int:
        if self.crop_size > grid:
            raise ValueError(f"crop_size {self.crop_size} is larger than the {grid}x{grid} patch grid")
        return self.crop_size**2

    def sample(self, batch_size: int, grid: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
        import torch  # lazily: see the module docstring
        c = self.crop_size
        self.keep_count(grid)
        corner = torch.randint(0, grid - c + 1, (batch_size, 2), generator=generator, device=device)  # (B, 2)
        offs = torch.arange(c, device=device)
        window = (offs[:, None] * grid + offs[None, :]).reshape(-1)  # (c*c,), row-major so already sorted
        return (corner[:, :1] * grid + corner[:, 1:]) + window[None, :]  # (B, c*c)


MASK_STRATEGIES: dict[str, type] = {cls.name: cls for cls in (PatchMask, BlockMask, CropMask)}
"""Registry: the ``mask.strategy`` names a spec may use, mapped to their classes."""


def build_mask(strategy: str, **params) -> MaskStrategy:
    """Instantiate a registered strategy by name, e.g. ``build_mask("block", rate=0.9, block_size=4)``."""
    try:
        cls = MASK_STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose one of {sorted(MASK_STRATEGIES)}") from None
    return cls(**params)


def effective_mask_rate(mask: MaskStrategy, grid: int) -> float:
    """Fraction of patches actually dropped, ``1 - K / N``: what a run should report besides the nominal rate."""
    return 1.0 - mask.keep_count(grid) / (grid * grid)
