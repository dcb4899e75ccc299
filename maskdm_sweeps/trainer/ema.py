"""Exponential moving average of the weights, with the ema-pytorch warmup the official MaskDM code uses."""

from __future__ import annotations

import copy

import torch
from torch import nn

EMA_UPDATE_AFTER_STEP = 100  # ema-pytorch's default: plain copies before this


def ema_decay(step: int, beta: float, warmup: bool = True) -> float:
    """Decay applied after optimizer step ``step`` (1-based count of updates).

    With warmup (ema-pytorch, power 2/3): 0 (a plain copy) up to step 101, then ``min(beta, 1 - (step - 100)^(-2/3))``,
    i.e. the method's ``1 - (1 + k - 101)^(-2/3)``; beta 0.999 is reached after about 31.6k steps.
    """
    if not warmup:
        return beta
    k = step - EMA_UPDATE_AFTER_STEP - 1
    if k <= 0:
        return 0.0
    return min(beta, 1.0 - (1.0 + k) ** (-2.0 / 3.0))


class EMA:
    """A frozen copy of ``model`` tracking ``ema = decay * ema + (1 - decay) * online`` over all parameters.

    The update is one batched ``_foreach_lerp_`` over every tensor (one kernel group, no Python loop per tensor).
    Buffers are copied.
    """

    def __init__(self, model: nn.Module, beta: float = 0.999, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.beta, self.warmup = beta, warmup
        self.num_updates = 0
        self._ema_params: list[torch.Tensor] = list(self.model.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = ema_decay(self.num_updates, self.beta, self.warmup)
        online = [p.detach() for p in model.parameters()]
        if decay == 0.0:
            torch._foreach_copy_(self._ema_params, online)
        else:
            torch._foreach_lerp_(self._ema_params, online, 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
