"""``--smoke``: any spec, shrunk to a CPU run on the embedded digits in minutes, keeping its axes.

The patch grid is the smallest (4, 8 or 16 on a side) on which the spec's mask settings (block sizes, crop windows)
stay valid; budgets
are scaled so the largest becomes a few dozen steps, and evaluation uses the in-domain digits FID.
"""

from __future__ import annotations

import copy
from typing import Any

from ..data.config import DEFAULT_IMAGE_SIZE
from ..maskdm import MODEL_PRESETS
from ..maskdm.masking import MaskStrategy
from ..maskdm.strategies import build_strategy

SMOKE_PRETRAIN_STEPS = 30
SMOKE_FINETUNE_STEPS = 40
SMOKE_BATCH = 32
BUDGET_KEYS = {"pretrain.steps": SMOKE_PRETRAIN_STEPS, "finetune.steps": SMOKE_FINETUNE_STEPS}


def _base_grid(base: dict) -> int:
    model = base.get("model") or {}
    preset = MODEL_PRESETS.get(model.get("preset", "uvit-s2-cifar32"), MODEL_PRESETS["uvit-s2-cifar32"])
    data = base.get("data") or {}
    size = data.get("image_size") or DEFAULT_IMAGE_SIZE.get(data.get("name", "digits")) or preset.img_size
    return max(1, size // (model.get("patch_size") or preset.patch_size))


def _mask_settings(spec: dict) -> list[dict]:
    """Every mask section the spec can produce: the base one and those of mask axes."""
    base = (spec.get("base") or {}).get("mask") or {}
    found = [base]
    sweep = spec.get("sweep") or {}
    for section in ("axes", "zip"):
        for key, values in (sweep.get(section) or {}).items():
            if key == "mask":
                found += [v for v in values if isinstance(v, dict)]
            elif key.startswith("mask.") and isinstance(values, list):
                found += [{**base, key.split(".", 1)[1]: v} for v in values]
    return found


def _strategy_of(mask: dict) -> MaskStrategy | None:
    """The strategy a raw mask setting names (``patch`` when it names none); None when it is not a valid one (the
    spec's validation reports it)."""
    try:
        return build_strategy(**{"strategy": "patch", **mask})
    except (TypeError, ValueError):
        return None


def smoke_grid(spec: dict) -> int:
    """The smallest patch grid (4, 8 or 16 on a side) on which every mask setting of the spec stays meaningful.

    Each strategy says which grids it fits (``MaskStrategy.fits_smoke_grid``): crop windows must fit, block sizes
    must divide the grid and leave at least two blocks per side. Patch masking works on any grid, so a patch-only
    spec runs on 4 x 4 patches (17 tokens): cheap.
    """
    strategies = [s for s in map(_strategy_of, _mask_settings(spec)) if s is not None]
    for grid in (4, 8, 16):
        if all(s.fits_smoke_grid(grid) for s in strategies):
            return grid
    return min(_base_grid(spec.get("base") or {}), 16)


def _digits_like(data: dict | None, image_size: int) -> dict:
    """Digits at ``image_size``, keeping the subset settings of ``data`` (fraction, max_images, seeds)."""
    keep = {k: v for k, v in (data or {}).items() if k in ("fraction", "max_images", "subset_seed")}
    return {"name": "digits", "image_size": image_size, **keep}


def _scale(values: list, largest_smoke: int) -> list:
    top = max((v for v in values if isinstance(v, (int, float))), default=0)
    return [
        v if not isinstance(v, (int, float)) or v == 0 or top == 0 else max(1, round(v / top * largest_smoke))
        for v in values
    ]


def smoke_spec(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a shrunk copy of a raw (unvalidated) spec mapping."""
    spec = copy.deepcopy(raw)
    base = spec.setdefault("base", {}) or {}
    spec["base"] = base
    grid = smoke_grid(spec)
    image_size = 16 if grid >= 8 else 8
    base["data"] = _digits_like(base.get("data"), image_size)
    base["model"] = {"preset": "tiny", "patch_size": image_size // grid}
    for stage, steps in (("pretrain", SMOKE_PRETRAIN_STEPS), ("finetune", SMOKE_FINETUNE_STEPS)):
        section = base.setdefault(stage, {}) or {}
        base[stage] = section
        if stage == "pretrain" and not section.get("steps"):
            section["steps"] = 0
        else:
            section["steps"] = steps
        section["batch_size"] = SMOKE_BATCH
        section["warmup_steps"] = min(section.get("warmup_steps", 0), steps // 4)
        if section.get("data"):
            section["data"] = _digits_like(section["data"], image_size)
    eval_cfg = base.get("eval") or {}
    base["eval"] = {
        **{k: v for k, v in eval_cfg.items() if k in ("sampler", "eta", "weights", "stages")},
        "every_steps": SMOKE_FINETUNE_STEPS // 2 if eval_cfg.get("every_steps") else 0,
        "num_samples": 64,
        "batch_size": 64,
        "sampling_steps": 10,
        "grid_size": 16,
        "backend": "digits-classifier",
    }
    base["runtime"] = {"device": "cpu", "log_every_steps": 5, "checkpoint_every_steps": 10}
    sweep = spec.get("sweep") or {}
    for section in ("axes", "zip"):
        for key, values in (sweep.get(section) or {}).items():
            if key in BUDGET_KEYS and isinstance(values, list):
                sweep[section][key] = _scale(values, BUDGET_KEYS[key])
    scheduler = sweep.get("scheduler") or {}
    if scheduler.get("grace_period"):
        scheduler["grace_period"] = min(scheduler["grace_period"], SMOKE_FINETUNE_STEPS // 4)
    # one CPU per trial in all, shared by its workers (gloo): a 2-worker smoke trial fits a laptop too
    resources = spec.get("resources") or {}
    workers = resources.get("workers", 1) if isinstance(resources.get("workers", 1), int) else 1
    spec["resources"] = {**resources, "gpus": 0, "cpus": round(1 / max(1, workers), 4)}
    return spec
