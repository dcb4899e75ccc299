"""A sweep directory -> two tables: ``trials.parquet`` (one row per trial) and ``curves.parquet`` (every metric).

Only files are read (no ray, no mlflow), all through :mod:`maskdm_sweeps.layout`: each trial's manifest
(``trials/<id>/trial.json``: label, arm and mask columns as the plan named them, assignments, pre-training key,
effective mask rate, the devices it holds), its stage runs' ``config.json``, ``metrics.jsonl`` and ``result.json``,
the sweep's ``plan.json``, ``spec.resolved.yaml`` and ``events.jsonl``, and Tune's ``error.txt`` files for failure
reasons. The names come from :mod:`maskdm_sweeps.sweepspec.identity`, also for manifests written before they held
them.

Pre-trainings live in ``<results root>/_pretrain/<key>/`` and feed every trial that asks for one of their lengths
(milestones). Two conventions of cost, both in ``trials.parquet``:

* **own length**: each trial is charged the whole pre-training to the length it asked for, as recorded when that
  milestone was kept (``pretrain_tflops``, ``train_tflops``, ``wall_seconds``, ``gpu_hours``): what running the arm
  alone costs, whatever else the sweep held;
* **shares**: each stretch of a pre-training run is split evenly over the trials that need it
  (``pretrain_tflops_share``, ``pretrain_wall_seconds_share``); they add up to what was actually trained for the
  sweep, each stretch once, which is what the report's totals count.

A trial's pre-training curves are its run's metrics up to its own length (through the line it branched from).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..layout import StageRun, SweepDir, read_json, read_jsonl
from .membership import checked_plan, read_spec, trials_outside_plan
from .pretraining import Pretraining, shares_of
from ..sweepspec.identity import MASK_COLUMNS, arm_of, mask_columns
from .columns import (COVERED_BY_COLUMNS, CURVE_COLUMNS, TRIAL_COLUMNS, assignment_value, column_dtype, sort_trials,
                      typed_frame)

STAGE_ORDER = {"pretrain": 0, "finetune": 1}
log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------ reading
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


class _Stage:
    """What one stage run directory holds."""

    def __init__(self, run: StageRun):
        self.run = run
        self.config = read_json(run.config)
        self.result = read_json(run.result)
        self.records = read_jsonl(run.metrics)

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

    def tflops(self) -> tuple[float, float]:
        """``(train, eval)`` TFLOPs of the run so far: from result.json, else the last ``cost/*`` metrics."""
        if self.result is not None and "train_tflops" in self.result:
            return _float(self.result.get("train_tflops")), _float(self.result.get("eval_tflops"))
        last = self.last_values()
        return (last.get("cost/train_tflops", (0, math.nan))[1], last.get("cost/eval_tflops", (0, 0.0))[1])

    def wall_seconds(self) -> float:
        """From result.json; without one, an estimate: the span of the metrics.jsonl timestamps."""
        if self.result is not None:
            return _float(self.result.get("wall_seconds"))
        times = [t for t in (_float(r.get("time")) for r in self.records) if math.isfinite(t)]
        return max(times) - min(times) if len(times) >= 2 else math.nan


# ------------------------------------------------------------------------------------------------------ trials
def _tune_errors(sweep_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Failure reasons Ray Tune left in ``<sweep>/tune/*/<trial>/error.txt``: by trial id and by pretrain key.

    The trial is named by the last ``maskdm_trial`` it reported (Tune's result.json) or by its ``params.json``.
    """
    by_trial: dict[str, str] = {}
    by_pretrain: dict[str, str] = {}
    tune = SweepDir.of(sweep_dir).tune
    if not tune.is_dir():
        return by_trial, by_pretrain
    for err in sorted(tune.glob("*/*/error.txt")):
        lines = [ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
        reason = lines[-1][:300] if lines else "error"
        params = read_json(err.parent / "params.json") or {}
        reported = [r.get("maskdm_trial") for r in read_jsonl(err.parent / "result.json") if r.get("maskdm_trial")]
        if reported:
            by_trial[str(reported[-1])] = reason
        elif params.get("trial_id") and len(params) == 1:  # a grid trial: its Tune config is the trial id
            by_trial[params["trial_id"]] = reason
        unit = params.get("unit")  # phase 1: a pre-training's key, or a baseline trial's id ("t-...")
        if params.get("pretrain_key") or (unit and not str(unit).startswith("t-")):
            by_pretrain[str(params.get("pretrain_key") or unit)] = reason
        elif unit:
            by_trial.setdefault(unit, reason)
    return by_trial, by_pretrain


def _trial_row(sweep: str, manifest: dict, ft: _Stage, pretraining: "Pretraining | None", shared_by: int,
               share: tuple[float, float], reused: bool, errors: dict[str, str], pretrain_errors: dict[str, str],
               scheduler: str) -> tuple[dict, dict, dict]:
    """One row of ``trials.parquet``, the trial's assignments and its config (the axis columns are filled later)."""
    config = ft.config or manifest.get("config") or {}
    assignments = dict(manifest.get("assignments") or {})
    pre = _Stage(pretraining.run) if pretraining is not None else None
    errors = _with_divergence(manifest["trial_id"], (ft, pre), errors)
    row = {"sweep": sweep, "stage": "finetune", **_identity_columns(manifest, config),
           **_outcome_columns(manifest, ft, errors, pretrain_errors, scheduler),
           **_setting_columns(config, assignments, ft), **_cost_columns(manifest, ft, pretraining, share),
           **_pretraining_columns(manifest.get("pretrain_key"), shared_by, reused),
           "mlflow_run_id": _mlflow_run_id(ft)}
    return row, assignments, config


def _identity_columns(manifest: dict, config: dict) -> dict[str, Any]:
    """``trial_id``, ``arm``, ``label`` and the mask columns, as the plan wrote them into the manifest; a manifest
    written before it carried them gets them from the trial's config, by the same functions."""
    arm, mask = manifest.get("arm"), manifest.get("mask_columns")
    if arm is None or not isinstance(mask, dict):
        section = None if manifest.get("pretrain_key") is None else config.get("mask") or {}
        arm, mask = arm_of(section), mask_columns(section)
    return {"trial_id": manifest["trial_id"], "arm": arm, "label": manifest.get("label") or manifest["trial_id"],
            **{name: mask.get(name) for name in MASK_COLUMNS}, "mask_rate": _float(mask.get("mask_rate")),
            "effective_mask_rate": _float(manifest.get("effective_mask_rate"))}


def _with_divergence(trial_id: str, stages: tuple["_Stage | None", ...], errors: dict[str, str]) -> dict[str, str]:
    """``errors`` with the trial's reason from a diverged stage's file, unless Tune's error files gave one."""
    for stage in stages:
        diverged = read_json(stage.run.diverged) if stage is not None else None
        if diverged and trial_id not in errors:
            errors = {**errors, trial_id: str(diverged.get("error", "the loss diverged"))}
    return errors


def _outcome_columns(manifest: dict, ft: _Stage, errors: dict[str, str], pretrain_errors: dict[str, str],
                     scheduler: str) -> dict[str, Any]:
    """``status``, ``error`` and the FIDs and loss: from ``result.json``, else the latest metric reports."""
    trial_id, pretrain_key = manifest["trial_id"], manifest.get("pretrain_key")
    last = ft.last_values()
    if ft.result is not None:
        status = "stopped" if ft.result.get("stopped_early") else "finished"
        fid, fid_best, loss = (_float(ft.result.get(k)) for k in ("fid", "fid_best", "loss_final"))
    else:
        if trial_id in errors or (pretrain_key and pretrain_key in pretrain_errors):
            status = "failed"
        elif scheduler not in ("none", None) or ft.run.stopped_behind.exists():
            status = "stopped"  # an early-stopping scheduler (or stop_behind) ends trials without an error
        else:
            status = "incomplete"  # killed, still running or not resumed: the files cannot tell
        fid = last.get("eval/fid", (0, math.nan))[1]
        fids = [v for _, name, v, _ in ft.metric_records() if name == "eval/fid" and math.isfinite(v)]
        fid_best = min(fids) if fids else math.nan
        loss = last.get("train/loss", (0, math.nan))[1]
    error = errors.get(trial_id) or (pretrain_errors.get(pretrain_key) if pretrain_key else None)
    return {"status": status, "error": None if status == "finished" else error, "fid": fid, "fid_best": fid_best,
            "loss_final": loss, **{name: last.get(f"eval/{name}", (0, math.nan))[1]
                                   for name in ("recognisable", "fid_floor", "fid_noise_std")}}


def _setting_columns(config: dict, assignments: dict, ft: _Stage) -> dict[str, Any]:
    """Lengths, seed and the FID protocol: from the trial's config and the params its fine-tuning logged."""
    params = ft.params()
    return {
        "pretrain_steps": int(_get(config, "pretrain.steps", 0) or 0),
        "finetune_steps": int(_get(config, "finetune.steps", 0) or 0),
        "steps_done": ft.steps_done(),
        "seed": int(config.get("seed", assignments.get("seed", 0)) or 0),
        "fid_backend": params.get("fid_backend") or _get(config, "eval.backend"),
        "fid_num_samples": int(params.get("fid_num_samples", _get(config, "eval.num_samples", 0)) or 0),
        "fid_reference": params.get("fid_reference"),
    }


def _cost_columns(manifest: dict, ft: _Stage, pretraining: "Pretraining | None",
                  share: tuple[float, float]) -> dict[str, Any]:
    """TFLOPs, wall seconds and device hours: the fine-tuning plus its own pre-training length in full (what
    reaching that milestone cost; NaN while it is not kept), and the trial's shares of the run."""
    ft_train, ft_eval = ft.tflops()
    pre_train, pre_eval, pre_wall = pretraining.cost if pretraining is not None else (0.0, 0.0, 0.0)
    ft_wall = ft.wall_seconds()
    wall = ft_wall + pre_wall
    held = manifest.get("resources") or {}
    devices, gpus = _float(held.get("devices_billed")), _float(held.get("gpus_billed"))
    return {
        "train_tflops": ft_train + pre_train, "finetune_tflops": ft_train, "pretrain_tflops": pre_train,
        "pretrain_tflops_share": share[0], "eval_tflops": ft_eval + pre_eval,
        "device": held.get("device"), "devices_per_trial": devices, "device_hours": wall * devices / 3600.0,
        "gpu_hours": wall * gpus / 3600.0, "gpus_per_trial": gpus,
        "wall_seconds": wall, "finetune_wall_seconds": ft_wall, "pretrain_wall_seconds": pre_wall,
        "pretrain_wall_seconds_share": share[1],
    }


def _pretraining_columns(pretrain_key: str | None, shared_by: int, reused: bool) -> dict[str, Any]:
    return {"pretrain_trial_id": f"pre-{pretrain_key}" if pretrain_key else None, "pretrain_key": pretrain_key,
            "pretrain_reused": bool(reused), "pretrain_shared_by": int(shared_by) if pretrain_key is not None else 0}


def _mlflow_run_id(ft: _Stage) -> str | None:
    run_json = read_json(ft.run.mlflow_run)
    return run_json.get("run_id") if isinstance(run_json, dict) else None


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` of a sweep directory; see :data:`TRIAL_COLUMNS` and :data:`CURVE_COLUMNS`.

    A trial is a row once it has a manifest and a fine-tuning stage run (a trial never started has neither: the
    report lists the planned trials that are missing), and its plan holds it (others are left out with a warning).
    Raises :class:`~maskdm_sweeps.layout.SpecEdited` when ``plan.json`` is not the plan of ``spec.resolved.yaml``.
    """
    layout = SweepDir.of(sweep_dir)
    spec = read_spec(layout.path)
    plan = checked_plan(layout, spec)
    sweep = plan.get("sweep") or spec.get("name") or layout.name
    plan_pretrains = plan.get("pretrains") or {}
    events = read_jsonl(layout.events)
    trained_here = {e.get("key") for e in events if e.get("event") == "stage_start" and e.get("stage") == "pretrain"}
    errors, pretrain_errors = _tune_errors(layout.path)
    scheduler = _get(spec, "sweep.scheduler.type", "none")
    grid = _get(spec, "sweep.search.method", "grid") == "grid"

    outside = trials_outside_plan(layout.path)
    if outside:
        log.warning("%s: %d trial directories that its plan.json does not hold are left out of the results: %s",
                    layout.path, len(outside), ", ".join(outside))
    manifests = {tid: read_json(layout.manifest(tid)) for tid in layout.trial_ids() if tid not in outside}
    stages = {tid: _Stage(layout.finetune(tid)) for tid, m in manifests.items() if isinstance(m, dict)}
    # a trial whose fine-tuning never started (its pre-training failed) is a row too, from its manifest's config
    stages = {tid: st for tid, st in stages.items() if st.config is not None or manifests[tid].get("config")}
    keys = {tid: manifests[tid].get("pretrain_key") for tid in stages}
    pretrainings = {tid: Pretraining(layout, key, _pretrain_steps(manifests[tid], stages[tid]))
                    for tid, key in keys.items() if key}
    shares = shares_of({tid: pre for tid, pre in pretrainings.items() if pre.line is not None})

    def consumers(key: str) -> int:
        listed = (plan_pretrains.get(key) or {}).get("trial_ids")
        if grid and listed:
            return len(listed)
        return max(1, sum(1 for k in keys.values() if k == key))

    def reused(tid: str) -> bool:
        pre = pretrainings.get(tid)
        if pre is None:
            return False
        if events:  # reused iff this sweep trained nothing of the line that keeps its length
            return pre.line is not None and pre.unit not in trained_here
        return bool((plan_pretrains.get(pre.key) or {}).get("reused", False))

    rows, assignment_of, config_of = [], {}, {}
    for tid, st in stages.items():
        key = keys[tid]
        share = shares.get(tid, (math.nan, math.nan) if key else (0.0, 0.0))  # NaN: its length is not kept
        row, assignments, config = _trial_row(sweep, manifests[tid], st, pretrainings.get(tid),
                                              consumers(key) if key else 0, share, reused(tid), errors,
                                              pretrain_errors, scheduler)
        rows.append(row)
        assignment_of[tid], config_of[tid] = assignments, config

    trials = sort_trials(typed_frame(rows, _with_axis_columns(rows, assignment_of, config_of)))
    curves = _curves(stages, pretrainings)
    return trials, curves


def _with_axis_columns(rows: list[dict], assignment_of: dict[str, dict], config_of: dict[str, dict]) -> dict[str, str]:
    """Fill ``rows`` with one column per axis key that has no column of its own (values from the trial's config: it
    is the truth); returns every column's dtype, the fixed ones first."""
    axis = [k for k in dict.fromkeys(k for a in assignment_of.values() for k in a) if k not in COVERED_BY_COLUMNS]
    columns = dict(TRIAL_COLUMNS)
    for key in axis:
        name = key.replace(".", "_")
        if name in columns:
            continue
        values = []
        for row in rows:
            baseline_only_pretrain = row["pretrain_key"] is None and key.split(".")[0] in ("mask", "pretrain")
            value = None if baseline_only_pretrain else _get(config_of[row["trial_id"]], key)
            values.append(assignment_value(value))
        columns[name] = column_dtype(values)
        for row, value in zip(rows, values):
            row[name] = value
    return columns


def _pretrain_steps(manifest: dict, ft: _Stage) -> int:
    config = ft.config or manifest.get("config") or {}
    return int(_get(config, "pretrain.steps", 0) or 0)


def _curves(stages: dict[str, _Stage], pretrainings: dict[str, Pretraining]) -> pd.DataFrame:
    frames = []
    line_frames: dict[Path, pd.DataFrame] = {}

    def stretch_frame(line: Path, start: int, end: int) -> pd.DataFrame:
        if line not in line_frames:
            line_frames[line] = _stage_frame(_Stage(StageRun(line)), "pretrain")
        frame = line_frames[line]
        return frame[(frame["step"] > start) & (frame["step"] <= end)] if start else frame[frame["step"] <= end]

    for tid, st in stages.items():
        ft = _stage_frame(st, "finetune")
        pre = pretrainings.get(tid)
        parts = [stretch_frame(*stretch) for stretch in pre.stretches] if pre is not None else []
        parts.append(ft)
        for part in parts:
            if len(part):
                frames.append(part.assign(trial_id=tid))
    if not frames:
        return typed_frame([], CURVE_COLUMNS)
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
    layout = SweepDir.of(sweep_dir)
    paths = [layout.trials_parquet, layout.curves_parquet]
    events = layout.events
    stale = refresh or not all(p.exists() for p in paths) or (
        events.exists() and events.stat().st_mtime > min(p.stat().st_mtime for p in paths))
    if stale:
        write_results(sweep_dir)
    return tuple(pd.read_parquet(p, engine="pyarrow") for p in paths)


def write_tables(sweep_dir: Path) -> tuple[dict[str, Path], pd.DataFrame, pd.DataFrame]:
    """Collect and write ``trials.parquet`` and ``curves.parquet``; returns their paths and the two tables."""
    layout = SweepDir.of(sweep_dir)
    trials, curves = collect(layout.path)
    paths = {"trials": layout.trials_parquet, "curves": layout.curves_parquet}
    for df, path in ((trials, paths["trials"]), (curves, paths["curves"])):
        tmp = path.with_name(path.name + ".tmp")
        df.to_parquet(tmp, engine="pyarrow", index=False)
        tmp.replace(path)  # readers never see half a file
    return paths, trials, curves


def write_results(sweep_dir: Path) -> dict[str, Path]:
    """Write ``trials.parquet`` and ``curves.parquet`` into the sweep directory; returns their paths."""
    return write_tables(sweep_dir)[0]
