"""The learning rate of a stage: linear warmup, then constant or decayed to the stage's end."""

from __future__ import annotations

import math


def learning_rate(step: int, lr: float, warmup_steps: int, total_steps: int, decay: str = "none") -> float:
    """The rate of optimizer step ``step`` (1-based; 0 is the optimizer's initial value).

    Linear warmup from 0 at step 0 to ``lr`` at ``warmup_steps``; then constant (``decay="none"``), or a cosine or
    linear decay from ``lr`` to 0 at ``total_steps``. Only a decay reads ``total_steps``: without one, the first n
    steps of any run are the same, which is what lets one pre-training serve every shorter length.
    """
    if step < warmup_steps:
        return lr * (step / warmup_steps)
    if decay == "none" or total_steps <= warmup_steps:
        return lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 at the end of warmup, 1 at the last step
    return lr * (0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress)
