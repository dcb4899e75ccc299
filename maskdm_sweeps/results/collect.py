"""A sweep directory -> two tables: ``trials.parquet`` (one row per trial) and ``curves.parquet`` (every metric).

Only files are read (``plan.json``, ``spec.resolved.yaml``, ``events.jsonl``, each stage run's ``config.json``,
``metrics.jsonl``, ``result.json``; Tune's ``error.txt`` files for failure reasons): no ray, no mlflow.

Trials are discovered from ``<sweep>/trials/``, so searched trials (random, optuna), which ``plan.json`` does not
list, are found too; ``plan.json`` gives labels and assignments where it lists the trial. Pre-trainings live in
``<results root>/_pretrain/<key>/`` and may feed several trials: their metrics are attributed to every trial they
fed, and their wall-clock time is split evenly over those trials.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

TRIALS_FILE = "trials.parquet"
CURVES_FILE = "curves.parquet"
STAGE_ORDER = {"pretrain": 0, "finetune": 1}
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
    "gpu_hours": "float64",
    "gpus_per_trial": "float64",
    "wall_seconds": "float64",
    "finetune_wall_seconds": "float64",
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
_COVERED = {"seed", "baseline", "mask", "mask.strategy", "mask.rate", "mask.block_size", "mask.crop_size",
            "pretrain.steps", "finetune.steps", "eval.backend", "eval.num_samples"}


# ------------------------------------------------------------------------------------------------------ reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """The whole lines of a JSON-lines file (a half-written last line of a killed process is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _read_spec(sweep_dir: Path) -> dict:
    path = sweep_dir / "spec.resolved.yaml"
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def _get(data: Any, dotted: str, default: Any = None) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def store_dirs(sweep_dir: Path, spec: dict) -> list[Path]:
    """Where the shared pre-trainings may be: beside the sweep (the usual layout) and the spec's output_dir."""
    dirs = [sweep_dir.parent / "_pretrain"]
    if spec.get("output_dir"):
        dirs.append(Path(spec["output_dir"]) / "_pretrain")
    return list(dict.fromkeys(dirs))


class _Stage:
    """What one stage run directory holds."""

    def __init__(self, path: Path):
        self.path = path
        self.config = _read_json(path / "config.json")
        self.result = _read_json(path / "result.json")
        self.records = _read_jsonl(path / "metrics.jsonl")

    @property
    def exists(self) -> bool:
        return self.config is not None or self.result is not None or bool(self.records)

    def metric_records(self) -> list[tuple[int, str, float, float]]:
        """(step, metric, value, time) of every metric report, in file order."""
        out = []
        for rec in self.records:
            if rec.get("kind") != "metrics" or not isinstance(rec.get("values"), dict):
                continue
            for name, value in rec["values"].items():
                out.append((int(rec.get("step", 0)), str(name), _float(value), _float(rec.get("time"))))
        return out

    def last_values(self) -> dict[str, tuple[int, float]]:
        """metric -> (step, value) of its latest report (the last record of the highest step wins)."""
        out: dict[str, tuple[int, float]] = {}
        for step, name, value, _ in self.metric_records():
            if name not in out or step >= out[name][0]:
                out[name] = (step, value)
        return out

    def params(self) -> dict:
        merged: dict = {}
        for rec in self.records:
            if rec.get("kind") == "params" and isinstance(rec.get("values"), dict):
                merged.update(rec["values"])
        return merged

    def steps_done(self) -> int:
        if self.result is not None:
            return int(self.result.get("steps", 0))
        steps = [int(r.get("step", 0)) for r in self.records if r.get("kind") in ("metrics", "checkpoint")]
        return max(steps, default=0)

    def wall_seconds(self) -> float:
        """From result.json; without one, an estimate: the span of the metrics.jsonl timestamps."""
        if self.result is not None:
            return _float(self.result.get("wall_seconds"))
        times = [t for t in (_float(r.get("time")) for r in self.records) if math.isfinite(t)]
        return max(times) - min(times) if len(times) >= 2 else math.nan

    def effective_mask_rate(self) -> float:
        if self.result is not None and self.result.get("effective_mask_rate") is not None:
            return _float(self.result["effective_mask_rate"])
        if "effective_mask_rate" in self.params():
            return _float(self.params()["effective_mask_rate"])
        last = self.last_values().get("train/effective_mask_rate")
        return last[1] if last else math.nan


# ------------------------------------------------------------------------------------------------------ trials
def _pretrain_projection(config: dict) -> str:
    """The settings a pre-training depends on (as ``TrialConfig.stage_hash('pretrain')`` sees them)."""
    cfg = {k: v for k, v in config.items() if k not in ("finetune", "eval")}
    cfg["runtime"] = {"precision": _get(config, "runtime.precision")}
    return json.dumps(cfg, sort_keys=True)


def _find_pretrain(config: dict, stores: list[Path], cache: dict[Path, str | None]) -> str | None:
    """The key of the stored pre-training a trial config starts from (for trials plan.json does not list)."""
    if int(_get(config, "pretrain.steps", 0) or 0) == 0:
        return None
    want = _pretrain_projection(config)
    for store in stores:
        if not store.is_dir():
            continue
        for d in sorted(store.iterdir()):
            if d not in cache:
                cfg = _read_json(d / "config.json")
                cache[d] = _pretrain_projection(cfg) if isinstance(cfg, dict) else None
            if cache[d] == want:
                return d.name
    return None


def _axis_keys(spec: dict) -> list[str]:
    sweep = spec.get("sweep") or {}
    keys = list((sweep.get("axes") or {})) + list((sweep.get("zip") or {}))
    keys += list(((sweep.get("search") or {}).get("space") or {}))
    return list(dict.fromkeys(keys)) + ["seed"]


def _assignments_from_config(config: dict, spec: dict) -> dict[str, Any]:
    """For a trial plan.json does not list (a searched one): the values of the sweep's axis keys."""
    baseline = int(_get(config, "pretrain.steps", 0) or 0) == 0 and bool(_get(spec, "sweep.baseline", False))
    out: dict[str, Any] = {"baseline": True} if baseline else {}
    for key in _axis_keys(spec):
        if baseline and key.split(".")[0] in ("mask", "pretrain"):
            continue
        value = _get(config, key, None)
        if value is not None:
            out[key] = value
    return out


def _label(assignments: dict[str, Any]) -> str:
    def short(v):
        if isinstance(v, dict):
            return "/".join(f"{k}={x}" for k, x in v.items())
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    return " ".join(f"{k}={short(v)}" for k, v in assignments.items()) or "base"


def arm_name(strategy: str | None, rate: float | None = None, block_size: int | None = None,
             crop_size: int | None = None) -> str:
    """``baseline``, ``patch r=0.5``, ``block b=4 r=0.9``, ``crop c=11``."""
    if strategy is None:
        return "baseline"
    if strategy == "patch":
        return f"patch r={rate:g}"
    if strategy == "block":
        return f"block b={block_size} r={rate:g}"
    if strategy == "crop":
        return f"crop c={crop_size}"
    return str(strategy)


def _tune_errors(sweep_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Failure reasons Ray Tune left in ``<sweep>/tune/*/<trial>/error.txt``: by trial id and by pretrain key.

    The trial is named by the last ``maskdm_trial`` it reported (Tune's result.json) or by its ``params.json``.
    """
    by_trial: dict[str, str] = {}
    by_pretrain: dict[str, str] = {}
    tune = sweep_dir / "tune"
    if not tune.is_dir():
        return by_trial, by_pretrain
    for err in sorted(tune.glob("*/*/error.txt")):
        lines = [ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
        reason = lines[-1][:300] if lines else "error"
        params = _read_json(err.parent / "params.json") or {}
        reported = [r.get("maskdm_trial") for r in _read_jsonl(err.parent / "result.json") if r.get("maskdm_trial")]
        if reported:
            by_trial[reported[-1]] = reason
        elif params.get("trial_id") and len(params) == 1:  # a grid trial: its Tune config is the trial id
            by_trial[params["trial_id"]] = reason
        if params.get("pretrain_key"):
            by_pretrain[params["pretrain_key"]] = reason
    return by_trial, by_pretrain


def _typed_frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    for col, dtype in columns.items():
        if dtype in ("string", "Int64", "boolean") or len(df) == 0:
            df[col] = df[col].astype(dtype)
        elif dtype == "bool":
            df[col] = df[col].astype(bool)
        else:
            df[col] = pd.to_numeric(df[col]).astype(dtype)
    return df


def _column_dtype(values: list[Any]) -> str:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    nulls = len(present) < len(values)
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64" if nulls else "int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    return "string"


def _assignment_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def _trial_row(sweep: str, trial_id: str, ft: _Stage, pre: _Stage | None, planned: dict | None, spec: dict,
               pretrain_key: str | None, shared_by: int, reused: bool, errors: dict[str, str],
               pretrain_errors: dict[str, str], scheduler: str) -> tuple[dict[str, Any], dict, dict]:
    config = ft.config or {}
    baseline = pretrain_key is None
    mask = config.get("mask") or {}
    strategy = None if baseline else mask.get("strategy")
    rate = _float(mask.get("rate")) if strategy in ("patch", "block") else math.nan
    block = mask.get("block_size") if strategy == "block" else None
    crop = mask.get("crop_size") if strategy == "crop" else None

    last = ft.last_values()
    result = ft.result
    if result is not None:
        status = "stopped" if result.get("stopped_early") else "finished"
        fid, fid_best, loss = (_float(result.get(k)) for k in ("fid", "fid_best", "loss_final"))
    else:
        if trial_id in errors or (pretrain_key and pretrain_key in pretrain_errors):
            status = "failed"
        elif scheduler not in ("none", None):
            status = "stopped"  # an early-stopping scheduler ends trials without an error
        else:
            status = "incomplete"  # killed, still running or not resumed: the files cannot tell
        fid = last.get("eval/fid", (0, math.nan))[1]
        fids = [v for _, name, v, _ in ft.metric_records() if name == "eval/fid" and math.isfinite(v)]
        fid_best = min(fids) if fids else math.nan
        loss = last.get("train/loss", (0, math.nan))[1]
    error = errors.get(trial_id) or (pretrain_errors.get(pretrain_key) if pretrain_key else None)
    if status == "finished":
        error = None

    ft_wall = ft.wall_seconds()
    pre_wall = pre.wall_seconds() if pre is not None else (0.0 if baseline else math.nan)
    share = 0.0 if baseline else pre_wall / max(1, shared_by)
    gpus = _float(_get(spec, "resources.gpus"))
    # every GPU the trial holds: a packed (fractional) trial counts a whole one, data-parallel workers one each
    gpus = (max(1.0, gpus) if math.isfinite(gpus) else 1.0) * int(_get(spec, "resources.workers", 1) or 1)
    wall = ft_wall + share
    run_json = _read_json(ft.path / "mlflow_run.json")
    params = ft.params()

    if planned is not None:
        assignments = dict(planned.get("assignments") or {})
        label = planned.get("label") or _label(assignments)
    else:
        assignments = _assignments_from_config(config, spec)
        label = _label(assignments)

    row = {
        "sweep": sweep,
        "trial_id": trial_id,
        "arm": arm_name(strategy, rate, block, crop),
        "label": label,
        "stage": "finetune",
        "status": status,
        "error": error,
        "mask_strategy": strategy,
        "mask_rate": rate,
        "mask_block_size": block,
        "mask_crop_size": crop,
        "effective_mask_rate": 0.0 if baseline else (pre.effective_mask_rate() if pre is not None else math.nan),
        "pretrain_steps": int(_get(config, "pretrain.steps", 0) or 0),
        "finetune_steps": int(_get(config, "finetune.steps", 0) or 0),
        "steps_done": ft.steps_done(),
        "seed": int(config.get("seed", assignments.get("seed", 0)) or 0),
        "fid": fid,
        "fid_best": fid_best,
        "loss_final": loss,
        "gpu_hours": wall * gpus / 3600.0,
        "gpus_per_trial": gpus,
        "wall_seconds": wall,
        "finetune_wall_seconds": ft_wall,
        "pretrain_wall_seconds_share": share,
        "mlflow_run_id": run_json.get("run_id") if isinstance(run_json, dict) else None,
        "pretrain_trial_id": f"pre-{pretrain_key}" if pretrain_key else None,
        "pretrain_key": pretrain_key,
        "pretrain_reused": bool(reused),
        "pretrain_shared_by": 0 if baseline else int(shared_by),
        "fid_backend": params.get("fid_backend") or _get(config, "eval.backend"),
        "fid_num_samples": int(params.get("fid_num_samples", _get(config, "eval.num_samples", 0)) or 0),
        "fid_reference": params.get("fid_reference"),
    }
    return row, assignments, config


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` of a sweep directory; see :data:`TRIAL_COLUMNS` and :data:`CURVE_COLUMNS`."""
    sweep_dir = Path(sweep_dir).resolve()
    plan = _read_json(sweep_dir / "plan.json") or {}
    spec = _read_spec(sweep_dir)
    sweep = plan.get("sweep") or spec.get("name") or sweep_dir.name
    planned = {t["trial_id"]: t for t in plan.get("trials", []) if "trial_id" in t}
    plan_pretrains = plan.get("pretrains") or {}
    events = _read_jsonl(sweep_dir / "events.jsonl")
    trained_here = {e.get("key") for e in events if e.get("event") == "stage_start" and e.get("stage") == "pretrain"}
    errors, pretrain_errors = _tune_errors(sweep_dir)
    stores = store_dirs(sweep_dir, spec)
    scheduler = _get(spec, "sweep.scheduler.type", "none")
    grid = _get(spec, "sweep.search.method", "grid") == "grid"

    # every trial directory that holds a stage run (a trial never started has none: see report's note)
    trials_root = sweep_dir / "trials"
    found = sorted(d.name for d in trials_root.iterdir() if (d / "finetune").is_dir()) if trials_root.is_dir() else []
    stages = {tid: _Stage(trials_root / tid / "finetune") for tid in found}
    stages = {tid: st for tid, st in stages.items() if st.config is not None}

    probe_cache: dict[Path, str | None] = {}
    keys: dict[str, str | None] = {}
    for tid, st in stages.items():
        if tid in planned:
            keys[tid] = planned[tid].get("pretrain_key")
        else:
            keys[tid] = _find_pretrain(st.config, stores, probe_cache)

    def pretrain_dir(key: str) -> Path | None:
        for store in stores:
            if (store / key).is_dir():
                return store / key
        return None

    pretrains: dict[str, _Stage | None] = {}
    for key in {k for k in keys.values() if k}:
        d = pretrain_dir(key)
        pretrains[key] = _Stage(d) if d is not None else None

    def consumers(key: str) -> int:
        listed = (plan_pretrains.get(key) or {}).get("trial_ids")
        if grid and listed:
            return len(listed)
        return max(1, sum(1 for k in keys.values() if k == key))

    def reused(key: str | None) -> bool:
        if key is None:
            return False
        if events:  # trained by this sweep iff it logged a start of that pre-training
            return key not in trained_here and pretrains.get(key) is not None
        return bool((plan_pretrains.get(key) or {}).get("reused", False))

    rows, assignment_of, config_of = [], {}, {}
    for tid, st in stages.items():
        key = keys[tid]
        row, assignments, config = _trial_row(sweep, tid, st, pretrains.get(key) if key else None, planned.get(tid),
                                              spec, key, consumers(key) if key else 0, reused(key), errors,
                                              pretrain_errors, scheduler)
        rows.append(row)
        assignment_of[tid], config_of[tid] = assignments, config

    # one column per axis key that has no column of its own (values from the trial's config: it is the truth)
    axis = [k for k in dict.fromkeys(k for a in assignment_of.values() for k in a) if k not in _COVERED]
    columns = dict(TRIAL_COLUMNS)
    for key in axis:
        name = key.replace(".", "_")
        if name in columns:
            continue
        values = []
        for row in rows:
            baseline_only_pretrain = row["pretrain_key"] is None and key.split(".")[0] in ("mask", "pretrain")
            value = None if baseline_only_pretrain else _get(config_of[row["trial_id"]], key)
            values.append(_assignment_value(value))
        columns[name] = _column_dtype(values)
        for row, value in zip(rows, values):
            row[name] = value
    trials = sort_trials(_typed_frame(rows, columns))

    curves = _curves(stages, keys, pretrains)
    return trials, curves


ARM_SORT = ["mask_strategy", "mask_block_size", "mask_rate", "mask_crop_size"]


def sort_trials(df: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    """Baseline first, then by strategy, block size, rate, crop size, (extra columns,) seed and trial id."""
    if not len(df):
        return df.reset_index(drop=True)
    cols = ARM_SORT + [c for c in (extra or []) if c in df.columns] + [c for c in ("seed", "trial_id") if c in df]
    keyed = df.assign(_masked=df["mask_strategy"].notna())
    return keyed.sort_values(["_masked"] + cols, na_position="first", kind="stable").drop(
        columns="_masked").reset_index(drop=True)


def _curves(stages: dict[str, _Stage], keys: dict[str, str | None],
            pretrains: dict[str, _Stage | None]) -> pd.DataFrame:
    frames = []
    pre_frames: dict[str, pd.DataFrame] = {}
    for key, st in pretrains.items():
        if st is not None:
            pre_frames[key] = _stage_frame(st, "pretrain")
    for tid, st in stages.items():
        ft = _stage_frame(st, "finetune")
        key = keys[tid]
        parts = [pre_frames[key]] if key in pre_frames else []
        parts.append(ft)
        for part in parts:
            if len(part):
                frames.append(part.assign(trial_id=tid))
    if not frames:
        return _typed_frame([], CURVE_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(["trial_id", "stage", "step", "metric"], keep="last")  # a resumed stage appends
    df["_stage"] = df["stage"].map(STAGE_ORDER).fillna(len(STAGE_ORDER))
    df = df.sort_values(["trial_id", "_stage", "step", "metric"], kind="stable").drop(columns="_stage")
    df = df[list(CURVE_COLUMNS)].reset_index(drop=True)
    return df.astype(CURVE_COLUMNS)


def _stage_frame(st: _Stage, stage: str) -> pd.DataFrame:
    recs = st.metric_records()
    return pd.DataFrame({
        "stage": [stage] * len(recs),
        "step": np.array([r[0] for r in recs], dtype=np.int64),
        "metric": [r[1] for r in recs],
        "value": np.array([r[2] for r in recs], dtype=np.float64),
    })


def load(sweep_dir: Path, refresh: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` from the sweep's parquet files; they are (re)written first when missing, older than
    the sweep's ``events.jsonl`` (something ran since), or ``refresh`` is set."""
    sweep_dir = Path(sweep_dir)
    paths = [sweep_dir / TRIALS_FILE, sweep_dir / CURVES_FILE]
    events = sweep_dir / "events.jsonl"
    stale = refresh or not all(p.exists() for p in paths) or (
        events.exists() and events.stat().st_mtime > min(p.stat().st_mtime for p in paths))
    if stale:
        write_results(sweep_dir)
    return tuple(pd.read_parquet(p, engine="pyarrow") for p in paths)  # type: ignore[return-value]


def write_results(sweep_dir: Path) -> dict[str, Path]:
    """Write ``trials.parquet`` and ``curves.parquet`` into the sweep directory; returns their paths."""
    sweep_dir = Path(sweep_dir)
    trials, curves = collect(sweep_dir)
    paths = {"trials": sweep_dir / TRIALS_FILE, "curves": sweep_dir / CURVES_FILE}
    for df, path in ((trials, paths["trials"]), (curves, paths["curves"])):
        tmp = path.with_name(path.name + ".tmp")
        df.to_parquet(tmp, engine="pyarrow", index=False)
        tmp.replace(path)  # readers never see half a file
    return paths
