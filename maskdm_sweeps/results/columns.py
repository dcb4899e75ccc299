"""The two tables' columns and dtypes, the arm names, and the order trials are listed in."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from ..naming import arm_name  # noqa: F401 (re-exported: results name arms the one way, the strategy's own)

STATUSES = ("finished", "stopped", "failed", "incomplete")

# trials.parquet: the fixed columns and their dtypes (assignment columns of the sweep's axes follow them)
TRIAL_COLUMNS: dict[str, str] = {
    "sweep": "string",
    "trial_id": "string",
    "arm": "string",
    "label": "string",
    "stage": "string",
    "status": "string",
    "error": "string",
    "mask_strategy": "string",
    "mask_rate": "float64",
    "mask_block_size": "Int64",
    "mask_crop_size": "Int64",
    "effective_mask_rate": "float64",
    "pretrain_steps": "int64",
    "finetune_steps": "int64",
    "steps_done": "int64",
    "seed": "int64",
    "fid": "float64",
    "fid_best": "float64",
    "loss_final": "float64",
    "recognisable": "float64",
    "fid_floor": "float64",
    "fid_noise_std": "float64",
    "train_tflops": "float64",
    "finetune_tflops": "float64",
    "pretrain_tflops": "float64",
    "pretrain_tflops_share": "float64",
    "eval_tflops": "float64",
    "device": "string",
    "devices_per_trial": "float64",
    "device_hours": "float64",
    "gpu_hours": "float64",
    "gpus_per_trial": "float64",
    "wall_seconds": "float64",
    "finetune_wall_seconds": "float64",
    "pretrain_wall_seconds": "float64",
    "pretrain_wall_seconds_share": "float64",
    "mlflow_run_id": "string",
    "pretrain_trial_id": "string",
    "pretrain_key": "string",
    "pretrain_reused": "bool",
    "pretrain_shared_by": "int64",
    "fid_backend": "string",
    "fid_num_samples": "int64",
    "fid_reference": "string",
}
CURVE_COLUMNS: dict[str, str] = {"trial_id": "string", "stage": "string", "step": "int64", "metric": "string",
                                 "value": "float64"}

# axis keys whose value already has a column of its own
COVERED_BY_COLUMNS = {"seed", "baseline", "mask", "mask.strategy", "mask.rate", "mask.block_size", "mask.crop_size",
            "pretrain.steps", "finetune.steps", "eval.backend", "eval.num_samples"}


def typed_frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    for col, dtype in columns.items():
        if dtype in ("string", "Int64", "boolean") or len(df) == 0:
            df[col] = df[col].astype(dtype)
        elif dtype == "bool":
            df[col] = df[col].astype(bool)
        else:
            df[col] = pd.to_numeric(df[col]).astype(dtype)
    return df


def column_dtype(values: list[Any]) -> str:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    nulls = len(present) < len(values)
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64" if nulls else "int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    return "string"


def assignment_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


ARM_SORT = ["mask_strategy", "mask_block_size", "mask_rate", "mask_crop_size"]


def sort_trials(df: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    """Baseline first, then by strategy, block size, rate, crop size, (extra columns,) seed and trial id."""
    if not len(df):
        return df.reset_index(drop=True)
    cols = ARM_SORT + [c for c in (extra or []) if c in df.columns] + [c for c in ("seed", "trial_id") if c in df]
    keyed = df.assign(_masked=df["mask_strategy"].notna())
    return keyed.sort_values(["_masked"] + cols, na_position="first", kind="stable").drop(
        columns="_masked").reset_index(drop=True)
