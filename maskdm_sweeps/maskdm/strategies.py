"""The masking strategies that followed MaskDM, and :data:`STRATEGIES`, the registry of every ``mask.strategy``.

MaskDM's three masks (:mod:`.masking`: patch, block, crop) drop patch tokens before the backbone and score the
visible patches (MDSM). The strategies that followed it change the network or the loss; each is one
:class:`~.masking.MaskStrategy` class (spec section and behaviour at once), registered below:

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
sprint       ``encoder_depth`` dense blocks on every token       eps-MSE on every patch
             before the drop; after the backbone a fixed mask
             token in each dropped position, fused with the
             dense encoder's output (``Linear(2D, D)``), then
             ``decoder_depth`` blocks on every position
             (SPRINT, Park et al. 2026)
===========  ==================================================  ==============================================

All of them draw which patches are kept (or, for routing, which go through the span) with MaskDM's patch-wise rule:
``int(rate * N)`` random patches out of ``N``. A new strategy is one class here and one entry in
:data:`STRATEGIES` (plus ``model.py`` and ``flops.py`` when it adds network parts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field

from .masking import BASELINE_MASK_COLUMNS, BlockMask, CropMask, MaskStrategy, PatchMask, TokenCounts

if TYPE_CHECKING:
    import torch

__all__ = [
    "BASELINE_MASK_COLUMNS",
    "STRATEGIES",
    "DeferredMasking",
    "MaskConfig",
    "MaskDiT",
    "Sprint",
    "TokenCounts",
    "TokenRouting",
    "build_strategy",
    "maskdit_loss",
    "network_overrides",
    "strategy_from_columns",
    "token_counts",
    "training_loss",
]


class _PatchDrawn(MaskStrategy):
    """What the newer strategies share: MaskDM's patch-wise draw at ``rate``."""

    if TYPE_CHECKING:
        rate: float  # each subclass declares it as a field, with its own default and description

    def _patches(self) -> PatchMask:
        return PatchMask(rate=self.rate)

    def keep_count(self, grid: int) -> int:
        return self._patches().keep_count(grid)

    def sample(self, batch_size: int, grid: int, generator, device="cpu"):
        return self._patches().sample(batch_size, grid, generator, device)


def _every_patch_loss(
    model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, patch_size: int, **how
) -> torch.Tensor:
    """eps-MSE on every patch of a network that predicts every position ((B, N, p*p*C) or (B, C, H, W))."""
    from .diffusion import mdsm_loss

    return mdsm_loss(model(x_t, t, **how), noise, patch_size)


class MaskDiT(_PatchDrawn):
    """MaskDiT (Zheng et al., TMLR 2024): the backbone sees the visible patches, a small decoder every position (a
    learned mask token in each dropped one); loss: denoising on the visible patches plus an MAE term on the masked
    ones. The decoder stays part of the network for fine-tuning, which runs it on every patch (MaskDiT's "unmasking
    tuning")."""

    strategy: Literal["maskdit"] = Field("maskdit", description="Masking strategy: MaskDiT's encoder-decoder.")
    rate: float = Field(
        0.5, ge=0.0, lt=1.0, description="Fraction of patches dropped before the backbone (the paper: 0.5)."
    )
    decoder_depth: int = Field(2, ge=1, le=64, description="Transformer blocks of the decoder, on every position.")
    mae_coef: float = Field(
        0.1,
        ge=0.0,
        description="Weight of the MAE term: the masked patches' MSE against the "
        "noisy input normalised per patch (the paper: 0.1; 0 leaves MaskDM's loss).",
    )

    def network(self) -> dict[str, int]:
        return {"decoder_depth": self.decoder_depth}

    def loss(
        self, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor, patch_size: int
    ) -> torch.Tensor:
        pred = model(x_t, t, keep)  # (B, N, p*p*C): every position
        return maskdit_loss(pred, noise, x_t, keep, patch_size, self.mae_coef)


class DeferredMasking(_PatchDrawn):
    """Deferred masking (Sehwag et al. 2024, "Stretching Each Dollar"): a small patch-mixer runs on every token,
    then a share of them is dropped before the backbone; the loss covers the unmasked patches. The mixer stays part
    of the network for fine-tuning."""

    strategy: Literal["deferred"] = Field("deferred", description="Masking strategy: a patch-mixer, then the drop.")
    rate: float = Field(
        0.75, ge=0.0, lt=1.0, description="Fraction of patches dropped after the mixer (the paper: 0.75)."
    )
    mixer_depth: int = Field(2, ge=1, le=64, description="Transformer blocks of the patch-mixer, on every token.")

    def network(self) -> dict[str, int]:
        return {"mixer_depth": self.mixer_depth}


class TokenRouting(_PatchDrawn):
    """Token routing (TREAD, Krause et al., ICCV 2025): a random share of the patch tokens skips the middle of the
    backbone and is put back after it; nothing leaves the loss and no parameters are added."""

    strategy: Literal["routing"] = Field(
        "routing", description="Masking strategy: tokens routed past the middle blocks."
    )
    rate: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Selection rate: the fraction of patch tokens that skip the routed span (the paper: 0.5).",
    )
    route_from: int = Field(
        1,
        ge=0,
        le=64,
        description="The routed span: in-blocks from this index on, the "
        "mid-block and the out-blocks that mirror them (0: every block; depth // 2: the "
        "mid-block alone).",
    )

    def network(self) -> dict[str, int]:
        return {"route_from": self.route_from}

    def check_fits(self, grid: int, depth: int, preset: str) -> None:
        super().check_fits(grid, depth, preset)
        if self.route_from > depth // 2:
            raise ValueError(
                f"route_from {self.route_from} is past the {depth // 2} in-blocks of {preset} "
                f"(depth {depth}); use 0 to {depth // 2}"
            )

    def tokens(self, grid: int) -> TokenCounts:
        return TokenCounts(grid * grid, self.keep_count(grid))

    def loss(
        self, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor, patch_size: int
    ) -> torch.Tensor:
        return _every_patch_loss(model, x_t, t, noise, patch_size, route_idx=keep)  # (B, C, H, W) vs all the noise


class Sprint(_PatchDrawn):
    """SPRINT (Park et al., "Sparse-Dense Residual Fusion for Efficient Diffusion Transformers", ICLR 2026): a dense
    shallow encoder on every token, the backbone on the kept ones, then a residual fusion of the two (a fixed mask
    token in each dropped position, ``Linear(2D, D)`` on the concatenation with the encoder's output) before a
    decoder on every position; loss on every patch. Encoder, fusion and decoder stay part of the network for
    fine-tuning and sampling, which run the same network on every token."""

    strategy: Literal["sprint"] = Field(
        "sprint", description="Masking strategy: SPRINT's sparse-dense residual fusion."
    )
    rate: float = Field(
        0.75, ge=0.0, lt=1.0, description="Fraction of patches dropped before the backbone (the paper: 0.75)."
    )
    encoder_depth: int = Field(
        2, ge=1, le=64, description="Dense encoder blocks on every token before the drop (the paper: 2)."
    )
    decoder_depth: int = Field(
        2, ge=1, le=64, description="Decoder blocks on every position after the fusion (the paper: 2)."
    )

    def network(self) -> dict[str, int]:
        return {"mixer_depth": self.encoder_depth, "fusion_depth": self.decoder_depth}

    def loss(
        self, model, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor, patch_size: int
    ) -> torch.Tensor:
        return _every_patch_loss(model, x_t, t, noise, patch_size, keep_idx=keep)  # (B, N, p*p*C) vs all the noise


STRATEGIES: dict[str, type[MaskStrategy]] = {
    cls.name: cls for cls in (PatchMask, BlockMask, CropMask, MaskDiT, DeferredMasking, TokenRouting, Sprint)
}
"""Registry: every ``mask.strategy`` a spec may name, mapped to its class."""

if TYPE_CHECKING:
    MaskConfig = MaskStrategy  # what every member of the union below is, for the type checker
else:
    # built from the registry, so it is not spelled as `A | B | ...` (which the type checker could read)
    MaskConfig = Annotated[Union[tuple(STRATEGIES.values())], Field(discriminator="strategy")]  # noqa: UP007
"""The spec's ``mask`` section: one of the registered strategies, chosen by its ``strategy`` tag."""


def build_strategy(strategy: str, **params) -> MaskStrategy:
    """Instantiate a registered strategy by name, e.g. ``build_strategy("maskdit", rate=0.5, decoder_depth=2)``."""
    try:
        cls = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose one of {sorted(STRATEGIES)}") from None
    return cls(**params)


def strategy_from_columns(columns: Mapping[str, Any]) -> MaskStrategy | None:
    """The strategy of a ``trials.parquet`` row's mask columns (``mask_strategy``, ``mask_rate``, ...; a missing
    value as None or NaN); None for the baseline, an unknown strategy or columns that do not make a valid one."""
    knobs = {
        key[len("mask_") :]: value
        for key, value in columns.items()
        if key.startswith("mask_") and value is not None and value == value
    }  # NaN != NaN
    name = knobs.pop("strategy", None)
    cls = STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        return None
    try:
        return cls(**{k: v for k, v in knobs.items() if k in cls.model_fields})
    except ValueError:
        return None


def network_overrides(strategy: MaskStrategy) -> dict[str, int]:
    """The U-ViT fields a strategy sets (``mixer_depth``, ``decoder_depth``, ``route_from``, ``fusion_depth``)."""
    return strategy.network()


def token_counts(strategy: MaskStrategy, grid: int) -> TokenCounts:
    """The patch tokens a training forward of ``strategy`` processes (see :class:`TokenCounts`)."""
    return strategy.tokens(grid)


def training_loss(
    strategy: MaskStrategy | None,
    model,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    keep: torch.Tensor | None,
    patch_size: int,
) -> torch.Tensor:
    """The loss of one masked (``keep``: (B, K) from ``strategy.sample``) or unmasked (``keep`` None) batch.

    ``model``: the U-ViT or a wrapper of it (DDP, ``torch.compile``), called as the U-ViT.
    """
    if keep is not None and strategy is not None:
        return strategy.loss(model, x_t, t, noise, keep, patch_size)
    from .diffusion import mdsm_loss

    return mdsm_loss(model(x_t, t, keep), noise, patch_size, keep)  # plain DSM


def maskdit_loss(
    pred: torch.Tensor, noise: torch.Tensor, x_t: torch.Tensor, keep: torch.Tensor, patch_size: int, mae_coef: float
) -> torch.Tensor:
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
