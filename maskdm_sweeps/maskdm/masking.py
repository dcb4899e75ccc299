"""The masking strategies' common base, and MaskDM's own three masks (patch, block, crop).

A strategy is one class: its spec section (a frozen pydantic model: ``mask.strategy`` and its knobs, validated when
a spec is read) and its behaviour (which patches a training batch keeps, the network parts it adds, its loss, its
token counts, its names in results). :class:`MaskStrategy` gives every optional part a default; the registry of
every strategy a spec may name is :data:`maskdm_sweeps.maskdm.strategies.STRATEGIES`.

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

torch is imported inside the samplers and losses only: reading a spec and counting a mask's patches do not need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch


@dataclass(frozen=True)
class TokenCounts:
    """Patch tokens one training forward processes: ``kept`` in the backbone, ``span`` in its routed span (``kept``
    when nothing is routed); the mixer and decoder always see all ``N``."""

    kept: int
    span: int


class MaskStrategy(BaseModel):
    """A way to choose the visible patches of a batch of images, and what the network and the loss do with them.

    Subclasses declare ``strategy: Literal["name"]`` (the spec's tag) first, then their knobs as pydantic fields, and
    implement :meth:`keep_count` and :meth:`sample`; every other method has a default that fits MaskDM's masks.
    Positional arguments fill the knobs in their declared order: ``PatchMask(0.5)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # finite numbers only

    name: ClassVar[str]
    """The ``mask.strategy`` tag (set from the ``strategy`` field's default)."""
    plain_network: ClassVar[bool] = False
    """True when pre-training runs the plain U-ViT on the kept tokens and nothing else (MaskDM's masks): its cost is
    then the plain network's at ``K`` tokens, which the measured throughput table of ``sweep.estimate`` covers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        knobs = [n for n in type(self).model_fields if n != "strategy"]
        if len(args) > len(knobs):
            raise TypeError(f"{type(self).__name__} takes at most {len(knobs)} positional arguments ({knobs})")
        super().__init__(**dict(zip(knobs, args, strict=False)), **kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        tag = cls.model_fields.get("strategy")
        if tag is not None:
            cls.name = tag.default

    # ------------------------------------------------------------------------------------------ which patches
    def keep_count(self, grid: int) -> int:
        """Number of visible patches K on a ``grid x grid`` patch grid (raises ValueError if impossible)."""
        raise NotImplementedError

    def sample(
        self, batch_size: int, grid: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Sorted keep-indices ``(batch_size, K)``, int64, one fresh mask per sample."""
        raise NotImplementedError

    def check_fits(self, grid: int, depth: int, preset: str) -> None:
        """Raise ValueError when the strategy cannot run on a ``grid x grid`` patch grid of the U-ViT ``preset``
        (``depth`` blocks); the message names the knob."""
        self.keep_count(grid)

    def fits_smoke_grid(self, grid: int) -> bool:
        """Whether ``--smoke`` may shrink a spec with this mask to a ``grid x grid`` patch grid."""
        try:
            self.keep_count(grid)
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------------------- network, tokens, loss
    def network(self) -> dict[str, int]:
        """The U-ViT fields the strategy sets (``mixer_depth``, ``decoder_depth``, ...); MaskDM's masks none."""
        return {}

    def tokens(self, grid: int) -> TokenCounts:
        """The patch tokens a training forward processes (see :class:`TokenCounts`)."""
        kept = self.keep_count(grid)
        return TokenCounts(kept, kept)

    def loss(
        self, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor, patch_size: int
    ) -> torch.Tensor:
        """The loss of one masked batch: MaskDM's L_mdsm, eps-MSE on the visible patches.

        ``model``: the U-ViT or a wrapper of it (DDP, ``torch.compile``); x_t, noise: (B, C, H, W); t: (B,);
        keep: (B, K) from :meth:`sample`.
        """
        from .diffusion import mdsm_loss

        return mdsm_loss(model(x_t, t, keep), noise, patch_size, keep)

    # -------------------------------------------------------------------------------------- names in results
    def arm(self) -> str:
        """The arm's name in results, tables and plots: the strategy and its rate, e.g. ``patch r=0.5``."""
        rate = getattr(self, "rate", None)
        return f"{self.name} r={rate:g}" if rate is not None else self.name

    def line(self) -> str:
        """Which line of the FID-against-mask-rate plot the arm is a point of: the strategy's name (arms that differ
        only in their rate share a line)."""
        return self.name

    def mask_columns(self) -> dict[str, Any]:
        """The mask's columns of ``trials.parquet`` (dtypes: string, float64, Int64, Int64): the strategy, its
        nominal rate (NaN without one), its block size and crop size (None unless they are its knobs)."""
        rate = getattr(self, "rate", None)
        return {
            "mask_strategy": self.name,
            "mask_rate": math.nan if rate is None else float(rate),
            "mask_block_size": None,
            "mask_crop_size": None,
        }


BASELINE_MASK_COLUMNS: dict[str, Any] = {
    "mask_strategy": None,
    "mask_rate": math.nan,
    "mask_block_size": None,
    "mask_crop_size": None,
}
"""The mask columns of a baseline trial (no pre-training, so no mask)."""

RATE_DESCRIPTION = "Nominal mask rate in [0, 1): the fraction of patches dropped."


def _random_subset(batch_size: int, population: int, count: int, generator: torch.Generator, device) -> torch.Tensor:
    """``(batch_size, count)`` distinct integers from ``[0, population)`` per row, unsorted.

    argsort of uniform noise gives a uniform random permutation per row, all rows in one kernel.
    """
    import torch  # lazily: see the module docstring

    noise = torch.rand(batch_size, population, generator=generator, device=device)  # (B, population)
    return noise.argsort(dim=1)[:, :count]  # (B, count)


class PatchMask(MaskStrategy):
    """Patch-wise masking: ``int(rate * N)`` random patches are dropped."""

    strategy: Literal["patch"] = Field("patch", description="Masking strategy: random patches.")
    rate: float = Field(0.9, ge=0.0, lt=1.0, description=RATE_DESCRIPTION)
    plain_network: ClassVar[bool] = True

    def keep_count(self, grid: int) -> int:
        n = grid * grid
        return n - int(self.rate * n)

    def sample(self, batch_size: int, grid: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
        keep = _random_subset(batch_size, grid * grid, self.keep_count(grid), generator, device)  # (B, K)
        return keep.sort(dim=1).values


class BlockMask(MaskStrategy):
    """Block-wise masking: ``int(rate * N) // block_size**2`` random blocks of patches are dropped."""

    strategy: Literal["block"] = Field("block", description="Masking strategy: random square blocks of patches.")
    rate: float = Field(
        0.9, ge=0.0, lt=1.0, description="Nominal mask rate in [0, 1); the effective rate is floored to whole blocks."
    )
    block_size: int = Field(2, ge=1, description="Block side in patches; must divide the patch grid.")
    plain_network: ClassVar[bool] = True

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

    def fits_smoke_grid(self, grid: int) -> bool:
        return super().fits_smoke_grid(grid) and grid >= 2 * self.block_size  # at least two blocks per side

    def arm(self) -> str:
        return f"block b={self.block_size} r={self.rate:g}"

    def line(self) -> str:
        return f"block b={self.block_size}"  # one line per block size

    def mask_columns(self) -> dict[str, Any]:
        return {**super().mask_columns(), "mask_block_size": self.block_size}


class CropMask(MaskStrategy):
    """Cropping: one random ``crop_size x crop_size`` window of patches stays visible."""

    strategy: Literal["crop"] = Field("crop", description="Masking strategy: keep one random square window.")
    crop_size: int = Field(..., ge=1, description="Window side in patches; the mask rate is 1 - crop_size^2 / N.")
    plain_network: ClassVar[bool] = True

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

    def arm(self) -> str:
        return f"crop c={self.crop_size}"

    def mask_columns(self) -> dict[str, Any]:
        return {**super().mask_columns(), "mask_crop_size": self.crop_size}


def effective_mask_rate(mask: MaskStrategy, grid: int) -> float:
    """Fraction of patches actually dropped, ``1 - K / N``: what a run should report besides the nominal rate."""
    return 1.0 - mask.keep_count(grid) / (grid * grid)
