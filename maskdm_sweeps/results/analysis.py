"""Tables computed from ``trials`` and ``curves``: shared by the report, the plots and the CLI.

FID statistics use finished trials only (a stopped or failed trial's last FID is from fewer steps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

from .columns import ARM_SORT, TRIAL_COLUMNS

# settings that may be swept and then split an arm's rows (only when they vary within an arm)
_SPLITTING = ("pretrain_steps", "finetune_steps", "fid_backend", "fid_num_samples")


def group_keys(trials: pd.DataFrame) -> list[str]:
    """``arm`` plus every swept setting besides the mask and the seed: the rows that average over seeds only."""
    extra = [c for c in trials.columns if c not in TRIAL_COLUMNS]
    for col in _SPLITTING:
        if len(trials) and (trials.groupby("arm")[col].nunique(dropna=False) > 1).any():
            extra.append(col)
    return ["arm"] + extra


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[(trials["status"] == "finished") & trials["fid"].notna()]


def _ordered(df: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    keyed = df.assign(_masked=df["mask_strategy"].notna())
    cols = ["_masked"] + ARM_SORT + [c for c in extra if c in df.columns]
    return keyed.sort_values(cols, na_position="first", kind="stable").drop(columns="_masked").reset_index(drop=True)


def comparison_table(trials: pd.DataFrame) -> pd.DataFrame:
    """FID by arm (and by any other swept setting), over seeds: one row per arm.

    Columns: the group keys (``arm``, ...), ``mask_strategy``, ``mask_rate``, ``effective_mask_rate``, ``n_trials``
    (all trials of the arm), ``n_seeds`` (finished ones, with a FID), ``fid_mean``, ``fid_std`` (sample standard
    deviation, ddof=1; NaN for one seed), ``fid_min`` (the best seed's final FID), ``device_hours_mean``,
    ``train_tflops_mean`` (training compute, the whole pre-training included), ``recognisable_mean`` (digits only).
    """
    keys = group_keys(trials)
    out_cols = keys + ["mask_strategy", "mask_rate", "mask_block_size", "mask_crop_size", "effective_mask_rate",
                       "n_trials", "n_seeds", "fid_mean", "fid_std", "fid_min", "device_hours_mean", "train_tflops_mean",
                       "recognisable_mean"]
    rows = []
    for values, group in trials.groupby(keys, dropna=False, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        done = finished(group)
        fids = done["fid"].to_numpy(dtype=float)
        first = group.iloc[0]
        rows.append({
            **dict(zip(keys, values)),
            "mask_strategy": first["mask_strategy"],
            "mask_rate": first["mask_rate"],
            "mask_block_size": first["mask_block_size"],
            "mask_crop_size": first["mask_crop_size"],
            "effective_mask_rate": group["effective_mask_rate"].mean(),
            "n_trials": len(group),
            "n_seeds": len(fids),
            "fid_mean": fids.mean() if len(fids) else math.nan,
            "fid_std": fids.std(ddof=1) if len(fids) > 1 else math.nan,
            "fid_min": fids.min() if len(fids) else math.nan,
            "device_hours_mean": done["device_hours"].mean() if len(done) else math.nan,
            "train_tflops_mean": done["train_tflops"].mean() if len(done) else math.nan,
            "recognisable_mean": done["recognisable"].mean() if len(done) else math.nan,
        })
    if not rows:
        return pd.DataFrame(columns=out_cols)
    table = _ordered(pd.DataFrame(rows, columns=out_cols), keys[1:])
    for col in ("arm", "mask_strategy"):
        table[col] = table[col].astype("string")
    for col in ("n_trials", "n_seeds"):
        table[col] = table[col].astype("int64")
    return table.drop(columns=["mask_block_size", "mask_crop_size"])


def arm_order(trials: pd.DataFrame) -> list[str]:
    """Arms in display order: baseline, then by strategy, block size, rate, crop size."""
    if not len(trials):
        return []
    return list(dict.fromkeys(_ordered(trials, [])["arm"]))


def compute_unit(trials: pd.DataFrame) -> tuple[str, str]:
    """The name of the ``device_hours`` unit of these trials, long and short: GPU-hours, or CPU-hours (worker
    processes x wall-clock) for a CPU run, never GPU-hours that no GPU did."""
    devices = set(trials["device"].dropna()) if "device" in trials else set()
    if devices == {"cpu"}:
        return "CPU-hours", "CPU-h"
    if devices <= {"gpu"}:
        return "GPU-hours", "GPU-h"
    return "device-hours", "dev-h"


def fid_points(trials: pd.DataFrame, curves: pd.DataFrame, finished_only: bool = True) -> pd.DataFrame:
    """Every FID of every (finished) trial's fine-tuning, with its cost: ``trial_id, arm, step, fid, device_hours,
    tflops``.

    From the ``eval/fid`` curve, plus the final FID of ``trials`` (for runs that left no curve). The device-hours at a
    step are the trial's own pre-training (to its length, in full) plus the fine-tuning time pro rata of steps (linear in steps); ``tflops``
    is the training compute at that step, its whole pre-training included (exact: a step's FLOPs are fixed).
    """
    done = finished(trials) if finished_only else trials[trials["steps_done"] > 0]
    cols = ["trial_id", "arm", "step", "fid", "device_hours", "tflops"]
    if not len(done):
        return pd.DataFrame(columns=cols)
    evals = curves[(curves["stage"] == "finetune") & (curves["metric"] == "eval/fid")][["trial_id", "step", "value"]]
    evals = evals.rename(columns={"value": "fid"})
    fin = finished(done)  # an unfinished trial's last FID is from its last evaluation, which the curve holds
    finals = pd.DataFrame({"trial_id": fin["trial_id"], "step": fin["steps_done"], "fid": fin["fid"]})
    pts = pd.concat([evals.astype({"trial_id": "string"}), finals.astype({"trial_id": "string"})], ignore_index=True)
    pts = pts.dropna(subset=["fid"]).drop_duplicates(["trial_id", "step"], keep="first")
    info = done.set_index("trial_id")
    pts = pts[pts["trial_id"].isin(info.index)].copy()
    t = info.loc[pts["trial_id"]]
    scale = t["devices_per_trial"].to_numpy(dtype=float) / 3600.0
    frac = pts["step"].to_numpy(dtype=float) / np.maximum(t["steps_done"].to_numpy(dtype=float), 1.0)
    ft_wall = t["finetune_wall_seconds"].to_numpy(dtype=float)
    wall = t["pretrain_wall_seconds"].to_numpy(dtype=float) + ft_wall * frac
    pts["device_hours"] = wall * scale
    pts["tflops"] = t["pretrain_tflops"].to_numpy(dtype=float) + t["finetune_tflops"].to_numpy(dtype=float) * frac
    pts["arm"] = t["arm"].to_numpy()
    return pts[cols].sort_values(["trial_id", "step"]).reset_index(drop=True)


def fid_by_step(trials: pd.DataFrame, curves: pd.DataFrame, counts: bool = False):
    """Mean FID over seeds at each fine-tuning step (rows) for each arm (columns); with ``counts``, also how many
    trials each mean is over (``(means, counts)``): fewer than the arm's finished seeds where some had no
    evaluation at that step."""
    pts = fid_points(trials, curves)
    if not len(pts):
        return (pd.DataFrame(), pd.DataFrame()) if counts else pd.DataFrame()
    order = [a for a in arm_order(trials) if a in set(pts["arm"])]
    means = pts.pivot_table(index="step", columns="arm", values="fid", aggfunc="mean")[order]
    ns = pts.pivot_table(index="step", columns="arm", values="fid", aggfunc="count")[order].fillna(0).astype("int64")
    means.columns.name = ns.columns.name = None
    return (means, ns) if counts else means


def fid_at_budget(trials: pd.DataFrame, curves: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """FID at equal compute: the budget is the cheapest arm's mean device-hours; per arm, the mean over seeds of the
    last FID each trial had measured within the budget (``n_reached`` trials had one).

    Returns ``(budget, table)`` with columns ``arm, n_seeds, device_hours_mean, fid_mean, fid_at_budget, n_reached,
    pareto`` (``pareto``: no other arm has both a lower mean FID and fewer mean device-hours).
    """
    cols = ["arm", "n_seeds", "device_hours_mean", "fid_mean", "fid_at_budget", "n_reached", "pareto"]
    done = finished(trials)
    if not len(done):
        return math.nan, pd.DataFrame(columns=cols)
    per_arm = done.groupby("arm", sort=False).agg(n_seeds=("fid", "size"), device_hours_mean=("device_hours", "mean"),
                                                  fid_mean=("fid", "mean"))
    per_arm = per_arm.reindex([a for a in arm_order(trials) if a in per_arm.index])
    budget = float(per_arm["device_hours_mean"].min())
    pts = fid_points(trials, curves)
    within = pts[pts["device_hours"] <= budget * (1 + 1e-9)]
    last = within.sort_values(["trial_id", "step"]).groupby("trial_id").tail(1)
    at = last.groupby("arm").agg(fid_at_budget=("fid", "mean"), n_reached=("fid", "size"))
    table = per_arm.join(at, how="left")
    table["n_reached"] = table["n_reached"].fillna(0).astype("int64")
    g, f = table["device_hours_mean"].to_numpy(), table["fid_mean"].to_numpy()
    table["pareto"] = [not any((g[j] <= g[i] and f[j] < f[i]) or (g[j] < g[i] and f[j] <= f[i])
                               for j in range(len(g)) if j != i) for i in range(len(g))]
    table = table.reset_index().rename(columns={"index": "arm"})
    return budget, table[cols]


# ------------------------------------------------------------------------------------------------- speed-up
def arm_labels(trials: pd.DataFrame, keys: list[str] | None = None) -> pd.Series:
    """Each row's arm with the other swept settings of its group, e.g. ``patch r=0.5 · finetune_init_from=ema``
    (just the arm when nothing else is swept): the rows whose seeds average together. ``keys``: those settings'
    columns (default: ``group_keys(trials)`` without ``arm``; pass them for a table that is not ``trials``)."""
    keys = group_keys(trials)[1:] if keys is None else keys
    if not keys or not len(trials):
        return trials["arm"].astype("string")
    def label(row) -> str:
        extra = [f"{k}={row[k]}" for k in keys if not pd.isna(row[k])]
        return " · ".join([str(row["arm"])] + extra)
    return trials.apply(label, axis=1).astype("string")


def _matching_baseline(trials: pd.DataFrame, row: pd.Series, keys: list[str]) -> pd.DataFrame:
    """The baseline trials comparable with an arm: equal in every other swept setting the baseline has."""
    base = trials[trials["arm"] == "baseline"]
    for k in keys:
        if not pd.isna(row[k]):
            same = base[k].isna() | (base[k] == row[k])
            base = base[same.fillna(False).astype(bool)]
    return base


def arm_pairs(trials: pd.DataFrame, curves: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """Every masked arm (in the report's order) with its matching baseline: ``(label, arm trials, baseline trials,
    FID points of both)``. Finished trials that counted their FLOPs only; arms without a baseline are left out."""
    done = finished(trials)
    done = done[done["finetune_tflops"].notna() & done["pretrain_tflops"].notna()]  # older runs counted no FLOPs
    if not len(done) or not (done["arm"] == "baseline").any():
        return
    keys = group_keys(trials)[1:]
    labels = arm_labels(done)
    pts = fid_points(done, curves).merge(pd.DataFrame({"trial_id": done["trial_id"], "label": labels}), on="trial_id")
    order = [a for a in arm_order(done) if a != "baseline"]
    for label in dict.fromkeys(labels[done["arm"].isin(order)].sort_values(key=lambda s: s.map(
            lambda x: order.index(x.split(" · ")[0])), kind="stable")):
        members = done[labels == label]
        base = _matching_baseline(done, members.iloc[0], keys)
        if len(base):
            yield label, members, base, pts[pts["trial_id"].isin(set(members["trial_id"]) | set(base["trial_id"]))]


def speedup_table(trials: pd.DataFrame, curves: pd.DataFrame, targets: list[float] | None = None,
                  confidence: float = 0.9, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per masked arm and target FID: the training TFLOPs its seeds' mean FID curve needs to first reach the target,
    the baseline's, their ratio (the speed-up) with a ``confidence`` bootstrap interval over seeds, and a verdict.

    ``targets``: FIDs to reach; default (None) the matched baseline's final mean FID (``target`` column says which).
    Finished trials only; no baseline, no rows. Columns: :data:`~maskdm_sweeps.results.speedup.SPEEDUP_COLUMNS`.
    """
    from .speedup import SPEEDUP_COLUMNS, Curves, arm_speedup

    rows = []
    for label, members, base, pts in arm_pairs(trials, curves):
        arm_curves = Curves.of(pts[pts["trial_id"].isin(members["trial_id"])])
        base_curves = Curves.of(pts[pts["trial_id"].isin(base["trial_id"])])
        chosen = targets if targets else [float(base["fid"].mean())]
        for target in chosen:
            rows.append({"arm": label, "target": "spec" if targets else "baseline final FID",
                         **arm_speedup(arm_curves, base_curves, float(target), confidence, resamples, seed)})
    table = pd.DataFrame(rows, columns=SPEEDUP_COLUMNS)
    return table.astype({"arm": "string", "target": "string", "verdict": "string"})


# ------------------------------------------------------------------------------------------------- noise
def evaluation_noise(trials: pd.DataFrame) -> dict[str, float]:
    """How low FID goes and how much it wobbles, from finished trials: ``floor`` (mean ``fid_floor``), ``noise_std``
    (mean ``fid_noise_std``: one model's FID over sampling seeds), ``noise_trials`` (trials that measured it) and
    ``best_noise_std`` (the best trial's, NaN when it did not measure it)."""
    done = finished(trials)
    out = {"floor": math.nan, "noise_std": math.nan, "noise_trials": 0, "best_noise_std": math.nan}
    if not len(done):
        return out
    floors, noise = done["fid_floor"].dropna(), done["fid_noise_std"].dropna()
    out["floor"] = float(floors.mean()) if len(floors) else math.nan
    out["noise_std"] = float(noise.mean()) if len(noise) else math.nan
    out["noise_trials"] = int(len(noise))
    out["best_noise_std"] = float(done.loc[done["fid"].idxmin(), "fid_noise_std"])
    return out


def clearly_lower(fids: np.ndarray, reference: np.ndarray, noise_std: float) -> bool:
    """Whether FIDs ``fids`` (one per seed) are lower than ``reference``'s beyond the seeds' spread and the evaluation
    noise: every seed below every reference seed, and the means apart by more than twice the evaluation noise
    (a noise not measured counts as 0). One seed a side cannot show a spread: then only the noise rule applies."""
    fids, reference = np.asarray(fids, dtype=float), np.asarray(reference, dtype=float)
    if not len(fids) or not len(reference):
        return False
    margin = 2 * (0.0 if math.isnan(noise_std) else noise_std)
    return bool(fids.max() < reference.min() and reference.mean() - fids.mean() > margin)


def report_settings(spec: dict) -> dict:
    """The spec's ``report`` section (plain data) as :func:`speedup_table` keywords; ``targets`` None means the
    baseline's final FID."""
    section = spec.get("report") or {}
    target = section.get("target_fid")
    targets = None if target is None else [float(t) for t in (target if isinstance(target, list) else [target])]
    return {"targets": targets, "confidence": float(section.get("confidence", 0.9)),
            "resamples": int(section.get("bootstrap_samples", 2000))}
