"""A trial's identity and names: what decides each of its stages (the stage hash), what pre-training ignores, its
label, its arm and its mask columns.

The planner, the sweep, the tracking and the results all ask here, so a trial is named and keyed the one way.
Standard library only at import time (a ``TrialConfig`` is duck-typed), so the results, which read only files, can
name the trials of a sweep directory written before the manifest carried the names.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..naming import mask_arm_name

if TYPE_CHECKING:
    from ..trainer.config import Stage, TrialConfig

# What a pre-training ignores, by top-level section: it ends before fine-tuning and evaluates nothing that changes its
# weights, and runtime settings change speed, not results, except the numeric precision. The stage hash and the
# sweep's search (does a searched key change the pre-training?) both read this table.
PRETRAIN_IGNORED_SECTIONS = ("finetune", "eval", "runtime")
RESULT_CHANGING_RUNTIME = ("precision",)
# What a baseline (a trial without pre-training) ignores.
BASELINE_IGNORED_SECTIONS = ("mask", "pretrain")

MASK_COLUMNS = ("mask_strategy", "mask_rate", "mask_block_size", "mask_crop_size")
"""The columns of ``trials.parquet`` that describe a trial's mask (see :func:`mask_columns`)."""


# ----------------------------------------------------------------------------------------------------- keys
def affects_pretraining(key: str) -> bool:
    """Whether a dotted trial-config key (``mask.rate``, ``eval.num_samples``) changes what a pre-training computes."""
    section, _, rest = key.partition(".")
    if section == "runtime":
        return rest.split(".")[0] in RESULT_CHANGING_RUNTIME
    return section not in PRETRAIN_IGNORED_SECTIONS


def pretrain_length_shared(config: TrialConfig) -> bool:
    """Whether the pre-training's first n steps are the same whatever its length: then one run serves every
    length (a prefix), and its key leaves ``pretrain.steps`` out. A learning rate that decays to the stage's
    end depends on the length; warmup does not."""
    return config.pretrain.lr_decay == "none"


def stage_hash(config: TrialConfig, stage: Stage) -> str:
    """A key (16 hex digits) of every setting of ``config`` that affects what ``stage`` computes.

    Pre-trainings with equal keys are one run: the key is what the run is, not how long it runs (``pretrain.steps``
    is left out when :func:`pretrain_length_shared`; each trial asks for its length, a milestone of the run).
    Fine-tuning keys include the pre-training settings and length (they start from it), except for the
    baseline, which ignores mask and pre-training settings altogether.
    """
    cfg = config.model_dump(mode="json")
    cfg["runtime"] = {k: cfg["runtime"][k] for k in RESULT_CHANGING_RUNTIME}  # the rest changes speed only
    if stage == "pretrain":
        cfg = {k: v for k, v in cfg.items() if k == "runtime" or k not in PRETRAIN_IGNORED_SECTIONS}
        if pretrain_length_shared(config):
            cfg["pretrain"] = {k: v for k, v in cfg["pretrain"].items() if k != "steps"}
    elif config.pretrain.steps == 0:
        cfg = {k: v for k, v in cfg.items() if k not in BASELINE_IGNORED_SECTIONS}
        cfg["finetune"] = {k: v for k, v in cfg["finetune"].items() if k != "init_from"}  # nothing to init from
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def trial_id(config: TrialConfig) -> str:
    """``t-`` and the first 10 digits of the fine-tuning's key: equal settings, one trial (re-runs find it)."""
    return "t-" + stage_hash(config, "finetune")[:10]


def pretrain_key(config: TrialConfig) -> str | None:
    """The key of the pre-training run ``config`` starts from; None for the baseline (no pre-training)."""
    return stage_hash(config, "pretrain") if config.pretrain.steps > 0 else None


def with_pretrain_steps(config: TrialConfig, steps: int) -> TrialConfig:
    """``config`` with a pre-training of ``steps`` (a line of a shared run is trained to the longest length asked)."""
    return config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"steps": steps})})


# ----------------------------------------------------------------------------------------------------- names
def trial_label(assignments: Mapping[str, Any]) -> str:
    """The label of a trial: its axis values, e.g. ``mask.rate=0.9 finetune.lr=0.0002 seed=1`` (``base`` for none).

    Sections print as ``k=v/k=v``; sampled floats with 3 significant digits (``finetune.lr=0.000123``). It is the
    ``label`` of ``trials.parquet``, of ``plan.json`` and of the trial's MLflow run (tag ``label``).
    """

    def short(v):
        if isinstance(v, dict):
            return "/".join(f"{k}={x}" for k, x in v.items())
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    return " ".join(f"{k}={short(v)}" for k, v in assignments.items()) or "base"


def mask_section(config: TrialConfig) -> dict[str, Any] | None:
    """The ``mask`` section ``config`` pre-trains with, as plain data; None for the baseline (it masks nothing)."""
    return config.mask.model_dump(mode="json") if config.pretrain.steps > 0 else None


def mask_columns(mask: Mapping[str, Any] | None) -> dict[str, Any]:
    """The mask columns of ``trials.parquet`` from a ``mask`` section (plain data; None for the baseline), as the
    strategy gives them (:meth:`~maskdm_sweeps.maskdm.masking.MaskStrategy.mask_columns`): ``mask_strategy``,
    ``mask_rate``, ``mask_block_size``, ``mask_crop_size``. JSON-ready: a missing value is None, never NaN."""
    from ..maskdm.strategies import BASELINE_MASK_COLUMNS, build_strategy  # lazily: pydantic, not at import time

    columns = build_strategy(**mask).mask_columns() if mask else dict(BASELINE_MASK_COLUMNS)
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in columns.items()}


def arm_of(mask: Mapping[str, Any] | None) -> str:
    """The arm a ``mask`` section (plain data; None for the baseline) names: ``baseline``, ``patch r=0.5``,
    ``block b=4 r=0.9``, ``crop c=11``: the ``arm`` of ``trials.parquet`` and the MLflow tag ``arm``."""
    return mask_arm_name(mask)
