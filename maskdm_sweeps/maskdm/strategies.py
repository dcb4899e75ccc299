"""Masking strategies: where the masking happens in the network, what the loss sees, and what it costs.

MaskDM's three masks (:mod:`.masking`: patch, block, crop) drop patch tokens before the backbone and score the
visible patches (MDSM). The strategies that followed it change the network or the loss; each is a frozen dataclass
of its knobs with the same contract, and registers in :data:`STRATEGIES`, the one place a new one is added:

===========  ==================================================  ==============================================
strategy     network part (stays for fine-tuning and sampling)   training loss
===========  ==================================================  ==============================================
patch ...    none                                                eps-MSE on the visible patches (MDSM)
maskdit      ``decoder_depth`` blocks on every position after    eps-MSE on the visible patches + ``mae_coef`` x
             the backbone, a learned mask token in each dropped  MSE of the masked patches against the noisy
             one (MaskDiT, Zheng et al. 2024)                    input, normalised per patch (MAE's target)
deferred     ``mixer_depth`` blocks on every token before the    eps-MSE on the visible patches
             drop (Sehwag et al. 2024, "Stretching Each Dollar")
routing      none: ``rate`` of the tokens skip the routed span   eps-MSE on every patch: nothing leaves the loss
             (TREAD, Krause et al. 2025)
===========  ==================================================  ==============================================

All of them draw which patches are kept (or, for routing, which go through the span) with MaskDM's patch-wise rule:
``int(rate * N)`` random patches out of ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .masking import BlockMask, CropMask, MaskStrategy, PatchMask

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TokenCounts:
    """Patch tokens one training forward processes: ``kept`` in the backbone, ``span`` in its routed span (``kept``
    when nothing is routed); the mixer and decoder always see all ``N``."""

    kept: int
    span: int


class _PatchDrawn:
    """What the newer strategies share: MaskDM's patch-wise draw at ``rate``."""

    rate: float

    def _patches(self) -> PatchMask:
        return PatchMask(self.rate)

    def keep_count(self, grid: int) -> int:
        return self._patches().keep_count(grid)

    def sample(self, batch_size: int, grid: int, generator, device="cpu"):
        return self._patches().sample(batch_size, grid, generator, device)

    def network(self) -> dict[str, int]:
        return {}

    def tokens(self, grid: int) -> TokenCounts:
        kept = self.keep_count(grid)
        return TokenCounts(kept, kept)


@dataclass(frozen=True)
class MaskDiT(_PatchDrawn):
    """MaskDiT: encoder on the visible tokens, a ``decoder_depth``-block decoder on every position, loss = MDSM on the
    visible patches + ``mae_coef`` x MAE on the masked ones."""

    rate: float = 0.5
    decoder_depth: int = 2
    mae_coef: float = 0.1
    name: ClassVar[str] = "maskdit"

    def network(self) -> dict[str, int]:
        return {"decoder_depth": self.decoder_depth}

    def loss(self, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor,
             patch_size: int) -> torch.Tensor:
        pred = model(x_t, t, keep)  # (B, N, p*p*C): every position
        return maskdit_loss(pred, noise, x_t, keep, patch_size, self.mae_coef)


@dataclass(frozen=True)
class DeferredMasking(_PatchDrawn):
    """Deferred masking: a ``mixer_depth``-block patch-mixer on every token, then ``rate`` of them dropped."""

    rate: float = 0.75
    mixer_depth: int = 2
    name: ClassVar[str] = "deferred"

    def network(self) -> dict[str, int]:
        return {"mixer_depth": self.mixer_depth}


@dataclass(frozen=True)
class TokenRouting(_PatchDrawn):
    """Token routing: ``rate`` of the patch tokens skip the routed span (``route_from``, see the U-ViT) and are put
    back after it; every patch is scored. No parameters."""

    rate: float = 0.5
    route_from: int = 1
    name: ClassVar[str] = "routing"

    def network(self) -> dict[str, int]:
        return {"route_from": self.route_from}

    def tokens(self, grid: int) -> TokenCounts:
        return TokenCounts(grid * grid, self.keep_count(grid))

    def loss(self, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor,
             patch_size: int) -> torch.Tensor:
        from .diffusion import mdsm_loss

        return mdsm_loss(model(x_t, t, route_idx=keep), noise, patch_size)  # (B, C, H, W) against all the noise


STRATEGIES: dict[str, type] = {cls.name: cls for cls in (PatchMask, BlockMask, CropMask, MaskDiT, DeferredMasking,
                                                         TokenRouting)}
"""Registry: every ``mask.strategy`` a spec may name, mapped to its class."""


def build_strategy(strategy: str, **params) -> MaskStrategy:
    """Instantiate a registered strategy by name, e.g. ``build_strategy("maskdit", rate=0.5, decoder_depth=2)``."""
    try:
        cls = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose one of {sorted(STRATEGIES)}") from None
    return cls(**params)


def network_overrides(strategy: MaskStrategy) -> dict[str, int]:
    """The U-ViT fields a strategy sets (``mixer_depth``, ``decoder_depth``, ``route_from``); MaskDM's masks none."""
    return strategy.network() if hasattr(strategy, "network") else {}


def token_counts(strategy: MaskStrategy, grid: int) -> TokenCounts:
    """The patch tokens a training forward of ``strategy`` processes (see :class:`TokenCounts`)."""
    if hasattr(strategy, "tokens"):
        return strategy.tokens(grid)
    kept = strategy.keep_count(grid)
    return TokenCounts(kept, kept)


def training_loss(strategy: MaskStrategy | None, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  keep: torch.Tensor | None, patch_size: int) -> torch.Tensor:
    """The loss of one masked (``keep``: (B, K) from ``strategy.sample``) or unmasked (``keep`` None) batch.

    ``model``: the U-ViT or a wrapper of it (DDP, ``torch.compile``), called as the U-ViT.
    """
    if keep is not None and strategy is not None and hasattr(strategy, "loss"):
        return strategy.loss(model, x_t, t, noise, keep, patch_size)
    from .diffusion import mdsm_loss

    return mdsm_loss(model(x_t, t, keep), noise, patch_size, keep)  # MaskDM's L_mdsm (or plain DSM)


def maskdit_loss(pred: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor, keep: torch.Tensor, patch_size: int,
                 mae_coef: float) -> torch.Tensor:
    """MaskDiT's loss: eps-MSE on the visible patches + ``mae_coef`` x the MAE term on the masked ones.

    pred: (B, N, p*p*C) the network's output at every position; noise, x_t: (B, C, H, W); keep: (B, K). The MAE
    target of a masked patch is the noisy input's patch normalised by its own mean and (unbiased) variance, as MAE's
    ``norm_pix_loss`` and MaskDiT's code do; each term is a mean over its patches' elements per sample, then over the
    batch. ``mae_coef = 0`` is MaskDM's L_mdsm on the same visible patches.
    """
    import torch

    from .patches import patchify

    b, n = pred.shape[:2]
    visible = torch.zeros(b, n, dtype=torch.bool, device=pred.device).scatter_(1, keep, True)  # (B, N)
    pred = pred.float()
    dsm = (pred - patchify(noise, patch_size).float()).pow(2).mean(dim=2)  # (B, N) per patch
    loss = (dsm * visible).sum(1) / visible.sum(1)  # (B,): the visible patches
    if mae_coef:
        target = patchify(x_t, patch_size).float()  # (B, N, p*p*C)
        target = (target - target.mean(dim=2, keepdim=True)) / (target.var(dim=2, keepdim=True) + 1e-6).sqrt()
        masked = ~visible
        mae = (pred - target).pow(2).mean(dim=2)  # (B, N)
        loss = loss + mae_coef * (mae * masked).sum(1) / masked.sum(1).clamp(min=1)
    return loss.mean()
