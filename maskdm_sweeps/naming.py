"""Names a person reads: an arm's name from its mask, and a trial's short label for tables, logs and MLflow run names.

The results, the sweep's progress lines and the tracking all name things the same way; an arm's name is its
strategy's (:meth:`maskdm_sweeps.maskdm.masking.MaskStrategy.arm`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SEPARATOR = " · "
# axis keys whose short name is not their last part
SHORT_KEYS = {
    "pretrain.steps": "pre",
    "finetune.steps": "ft",
    "finetune.lr": "ft lr",
    "pretrain.lr": "pre lr",
    "finetune.init_from": "from",
    "finetune.warmup_steps": "ft warmup",
    "pretrain.warmup_steps": "pre warmup",
}


def arm_name(
    strategy: str | None, rate: float | None = None, block_size: int | None = None, crop_size: int | None = None
) -> str:
    """``baseline``, ``patch r=0.5``, ``block b=4 r=0.9``, ``crop c=11``, ``maskdit r=0.5``, ``routing r=0.5``: the
    strategy's own name for its arm (the strategy alone when the knobs do not make a valid one)."""
    if strategy is None:
        return "baseline"
    from .maskdm.strategies import strategy_from_columns

    found = strategy_from_columns(
        {"mask_strategy": strategy, "mask_rate": rate, "mask_block_size": block_size, "mask_crop_size": crop_size}
    )
    return found.arm() if found is not None else str(strategy)


def mask_arm_name(mask: Mapping[str, Any] | None) -> str:
    """The arm name of a ``mask`` section (plain data); ``baseline`` for None."""
    if not mask:
        return "baseline"
    return arm_name(mask.get("strategy"), mask.get("rate"), mask.get("block_size"), mask.get("crop_size"))


def compact_number(value: int | float) -> str:
    """``20000 -> 20k``, ``1500 -> 1.5k``, ``0.0002 -> 0.0002``, ``7 -> 7``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and abs(value) >= 1000 and value % 100 == 0:
        return f"{value / 1000:g}k"
    return f"{value:g}" if isinstance(value, float) else str(value)


def short_value(key: str, value: Any) -> str:
    """One swept value, short: a string alone (``ema``), a number after its short key (``pre 20k``, ``lr 0.0002``)."""
    name = SHORT_KEYS.get(key, key.rsplit(".", 1)[-1].replace("_", " "))
    if isinstance(value, str):
        return value if key in SHORT_KEYS or "." in key else f"{name} {value}"
    if isinstance(value, Mapping):
        return "/".join(f"{k}={compact_number(v) if isinstance(v, (int, float)) else v}" for k, v in value.items())
    return f"{name} {compact_number(value)}" if isinstance(value, (int, float)) else f"{name} {value}"


def short_label(assignments: Mapping[str, Any], mask: Mapping[str, Any] | None, seed: int) -> str:
    """A trial in a few words: its arm (from its mask; ``baseline`` for None), every other swept value, its seed,
    e.g. ``patch r=0.5 · from ema · s0``, ``baseline · pre 0 · ft 100k · s1``."""
    parts = [mask_arm_name(mask)]
    for key, value in assignments.items():
        if key in ("seed", "baseline", "mask") or key.startswith("mask."):
            continue
        parts.append(short_value(key, value))
    parts.append(f"s{seed}")
    return SEPARATOR.join(parts)


def distinct(labels: Mapping[str, str]) -> dict[str, str]:
    """``id -> label`` with labels that two ids share made distinct by the id's first characters."""
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {ident: label if seen[label] == 1 else f"{label}{SEPARATOR}{ident[:8]}" for ident, label in labels.items()}


def mlflow_key(name: str) -> str:
    """A name (an arm, ``patch r=0.5``) made safe for an MLflow metric or tag key: every character MLflow refuses
    in keys (anything but letters, digits, ``_``, ``-``, ``.``, space and ``/``) becomes ``_``."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)
