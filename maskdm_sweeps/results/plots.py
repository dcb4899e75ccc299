"""``plots/*.png`` of a sweep: FID against the mask rate, training curves and FID against device-hours here; FID
against training TFLOPs and the final sample grids in :mod:`.speedup_plots`; ``write_plots`` writes them all.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): the process-wide backend is left alone and no
window ever opens, also on machines without a display.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .analysis import (arm_order, comparison_table, compute_unit, fid_at_budget, fid_points, finished, group_keys,
                       report_settings)
from ..layout import SweepDir
from ..maskdm.strategies import strategy_from_columns
from .collect import load, read_spec
from .figures import DPI, _colors, _fid_label, _figure, _save, _seeds_text, _title
# the speed-up's figures live in speedup_plots; importable from here as before
from .speedup_plots import final_samples_figure, fid_vs_tflops_figure, plot_fid_vs_tflops, seed_spread  # noqa: F401

MASK_COLUMNS = ["mask_strategy", "mask_rate", "mask_block_size", "mask_crop_size"]


def _plain(row: pd.Series) -> dict:
    """A row's values as Python ones, missing ones (NaN, NA) as None."""
    return {k: None if pd.isna(v) else (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _compute_label(trials: pd.DataFrame) -> str:
    unit, _ = compute_unit(trials)
    how = "worker processes x wall-clock" if unit == "CPU-hours" else "incl. pre-training share"
    return f"{unit} per trial (h; {how})"


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.3")


def fid_vs_mask_rate_figure(trials: pd.DataFrame, spec: dict) -> Figure:
    """Final FID against the effective mask rate: per strategy (and block size, and other swept setting) a line of
    the arms' means over seeds with error bars of the standard deviation over seeds (ddof=1; none for one seed), each
    seed as a faint dot; the baseline as a dashed horizontal line with a band of its mean ± std. Arms without a
    numeric mask rate are left out."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    table = comparison_table(trials)
    extra = [k for k in group_keys(trials) if k != "arm"]
    done = finished(trials)
    drew = False
    base = table[table["arm"] == "baseline"]
    for _, row in base.iterrows():
        if math.isnan(row["fid_mean"]):
            continue
        tag = " ".join(f"{k}={row[k]}" for k in extra)
        ax.axhline(row["fid_mean"], color="black", ls="--", lw=1.2,
                   label=f"baseline (no pre-training){' ' + tag if tag else ''}: mean ± std, n={row['n_seeds']}")
        if not math.isnan(row["fid_std"]):
            ax.axhspan(row["fid_mean"] - row["fid_std"], row["fid_mean"] + row["fid_std"], color="black", alpha=0.08)
        drew = True
    masked = table[table["arm"] != "baseline"].copy()
    if len(masked):
        mask_of_arm = trials.drop_duplicates("arm").set_index("arm")[MASK_COLUMNS]

        def line_of(r) -> str:  # one line per strategy (and block size, and any other swept setting)
            strategy = strategy_from_columns(_plain(mask_of_arm.loc[r["arm"]])) if r["arm"] in mask_of_arm.index \
                else None
            parts = [strategy.line() if strategy is not None else str(r["mask_strategy"])]
            return " ".join(parts + [f"{k}={r[k]}" for k in extra])

        masked["line"] = masked.apply(line_of, axis=1)
        cmap = matplotlib.colormaps["tab10"]
        for i, (line, rows) in enumerate(masked.groupby("line", sort=False)):
            rows = rows.dropna(subset=["fid_mean", "effective_mask_rate"]).sort_values("effective_mask_rate")
            if not len(rows):
                continue
            color = cmap(i % 10)
            spread = "mean ± std over seeds" if (rows["n_seeds"] > 1).any() else "one seed: no error bar"
            ax.errorbar(rows["effective_mask_rate"], rows["fid_mean"], yerr=rows["fid_std"].fillna(0), marker="o",
                        capsize=3, color=color, label=f"{line} ({spread}, {_seeds_text(rows['n_seeds'])})")
            seeds = done[done["arm"].isin(rows["arm"])]
            ax.scatter(seeds["effective_mask_rate"], seeds["fid"], s=12, color=color, alpha=0.35, zorder=1)
            drew = True
    if not drew:
        _empty(ax, "no finished trial with a FID")
    ax.set_xlabel("effective mask rate of pre-training (fraction of patches dropped)")
    ax.set_ylabel(_fid_label(trials))
    ax.set_xlim(-0.02, 1.0)
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=8, loc="best")
    _title(fig, spec, trials, "FID after fine-tuning vs mask rate (error bars: std over seeds)")
    fig.tight_layout()
    return fig


def plot_fid_vs_mask_rate(trials: pd.DataFrame, spec: dict, path: Path) -> Path:
    """Write :func:`fid_vs_mask_rate_figure` to ``path``."""
    fid_vs_mask_rate_figure(trials, spec).savefig(path, dpi=DPI)
    return path


def _complete_mean(rows: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean over trials of ``x`` and ``y`` at each step, kept only at steps every trial of ``rows`` reported (a mean
    over a changing set of seeds would draw jumps that are not there)."""
    if not len(rows):
        return pd.DataFrame(columns=[x, y])
    n = rows["trial_id"].nunique()
    agg = rows.groupby("step").agg(**{x: (x, "mean"), y: (y, "mean"), "_n": ("trial_id", "nunique")})
    return agg[agg["_n"] == n].drop(columns="_n")


def _draw_arm(ax, rows: pd.DataFrame, finished_ids: set, x: str, y: str, arm: str, color, marker=None) -> bool:
    """Thin lines: every trial (stopped and failed ones too); bold: the mean over the arm's finished trials."""
    if not len(rows):
        return False
    style = dict(color=color, ls="--" if arm == "baseline" else "-")
    for _, tr in rows.groupby("trial_id"):
        ax.plot(tr[x], tr[y], lw=0.7, alpha=0.25, marker=marker, ms=2, **style)
    mean = _complete_mean(rows[rows["trial_id"].isin(finished_ids)], x, y)
    n = rows.loc[rows["trial_id"].isin(finished_ids), "trial_id"].nunique()
    if len(mean):
        ax.plot(mean[x], mean[y], lw=1.8, marker=marker, ms=4, label=f"{arm} (n={n})", **style)
    return True


def plot_curves(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict, path: Path) -> Path:
    fig = _figure(11, 4.5)
    ax_loss, ax_fid = fig.subplots(1, 2)
    arms = arm_order(trials)
    colors = _colors(arms)
    done = set(finished(trials)["trial_id"])
    loss = curves[(curves["stage"] == "finetune") & (curves["metric"] == "train/loss")]
    loss = loss[np.isfinite(loss["value"].to_numpy(dtype=float))].rename(columns={"value": "loss"})
    fids = fid_points(trials, curves, finished_only=False).assign(step_=lambda d: d["step"])
    any_loss = any_fid = False
    for arm in arms:
        ids = set(trials.loc[trials["arm"] == arm, "trial_id"])
        rows = loss[loss["trial_id"].isin(ids)].assign(step_=lambda d: d["step"])
        any_loss |= _draw_arm(ax_loss, rows, done, "step_", "loss", arm, colors[arm])
        any_fid |= _draw_arm(ax_fid, fids[fids["arm"] == arm], done, "step_", "fid", arm, colors[arm], marker="o")
    if not any_loss:
        _empty(ax_loss, "no train/loss records\n(no metrics.jsonl in the stage runs)")
    if not any_fid:
        _empty(ax_fid, "no FID yet")
    ax_loss.set_xlabel("fine-tuning step (optimizer steps)")
    ax_loss.set_ylabel("train/loss (DSM: MSE on the noise)")
    ax_loss.set_title("fine-tuning loss")
    ax_fid.set_xlabel("fine-tuning step (optimizer steps)")
    ax_fid.set_ylabel(_fid_label(trials))
    ax_fid.set_title("FID during fine-tuning")
    for ax, drew in ((ax_loss, any_loss), (ax_fid, any_fid)):
        ax.grid(alpha=0.3)
        if drew and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if len(arms) > 6 else 1)
    _title(fig, spec, trials, "training curves (bold: mean over finished seeds; thin: each trial)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def plot_fid_vs_device_hours(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict, path: Path) -> Path:
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    arms = arm_order(trials)
    colors = _colors(arms)
    pts = fid_points(trials, curves)
    done = set(finished(trials)["trial_id"])
    drew = False
    for arm in arms:
        drew |= _draw_arm(ax, pts[pts["arm"] == arm], done, "device_hours", "fid", arm, colors[arm], marker="o")
    if drew:
        budget, _ = fid_at_budget(trials, curves)
        if np.isfinite(budget):
            ax.axvline(budget, color="0.5", ls=":", lw=1, label=f"equal-compute budget ({budget:.3g} h)")
        ax.legend(fontsize=7, ncol=2 if len(arms) > 6 else 1)
    else:
        _empty(ax, "no finished trial with a FID")
    ax.set_xlabel(_compute_label(trials))
    ax.set_ylabel(_fid_label(trials))
    ax.grid(alpha=0.3)
    _title(fig, spec, trials, "FID vs compute (bold: mean over seeds; thin: each trial)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def write_plots(sweep_dir: Path, trials: pd.DataFrame | None = None, curves: pd.DataFrame | None = None,
                targets: list[float] | None = None) -> list[Path]:
    """Write ``plots/fid_vs_mask_rate.png``, ``plots/curves.png``, ``plots/fid_vs_device_hours.png``, where the
    trials have training TFLOPs ``plots/fid_vs_tflops.png`` (``targets``: its target FIDs, default the spec's
    ``report.target_fid``, else the baseline's final FID), and ``plots/final_samples.png``."""
    sweep_dir = Path(sweep_dir)
    if trials is None or curves is None:
        trials, curves = load(sweep_dir)
    spec = read_spec(sweep_dir)
    out = SweepDir.of(sweep_dir).plots
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_fid_vs_mask_rate(trials, spec, out / "fid_vs_mask_rate.png"),
        plot_curves(trials, curves, spec, out / "curves.png"),
        plot_fid_vs_device_hours(trials, curves, spec, out / "fid_vs_device_hours.png"),
        plot_fid_vs_tflops(trials, curves, spec, out / "fid_vs_tflops.png",
                           targets if targets is not None else report_settings(spec)["targets"]),
        _save(final_samples_figure(sweep_dir, trials), out / "final_samples.png"),
    ]
    return [p for p in paths if p is not None]
