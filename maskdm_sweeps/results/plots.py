"""``plots/*.png`` of a sweep: FID against the mask rate, training curves, FID against device-hours and against
training TFLOPs (with each arm's crossing of the target FID, the speed-up's measure).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): the process-wide backend is left alone and no
window ever opens, also on machines without a display.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .analysis import (arm_labels, arm_order, comparison_table, compute_unit, fid_at_budget, fid_points, finished,
                       group_keys, report_settings, speedup_table)
from ..layout import SweepDir
from .collect import load, read_spec

DPI = 120


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _colors(arms: list[str]) -> dict[str, tuple]:
    masked = [a for a in arms if a != "baseline"]
    cmap = matplotlib.colormaps["viridis"]
    out = {a: cmap(0.9 * i / max(1, len(masked) - 1)) for i, a in enumerate(masked)}
    out["baseline"] = (0.0, 0.0, 0.0, 1.0)
    return out


def _fid_label(trials: pd.DataFrame) -> str:
    backends = ", ".join(sorted(set(trials["fid_backend"].dropna()))) or "?"
    samples = ", ".join(str(n) for n in sorted(set(trials["fid_num_samples"])))
    return f"FID ({backends}, {samples} samples; lower is better)"


def _compute_label(trials: pd.DataFrame) -> str:
    unit, _ = compute_unit(trials)
    how = "worker processes x wall-clock" if unit == "CPU-hours" else "incl. pre-training share"
    return f"{unit} per trial (h; {how})"


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.3")


def _title(fig, spec: dict, trials: pd.DataFrame, what: str) -> None:
    name = spec.get("name") or (trials["sweep"].iloc[0] if len(trials) else "")
    fig.suptitle(f"{name}: {what}" if name else what)


def _seeds_text(counts) -> str:
    """``n=3`` or ``n=2-3`` for the numbers of seeds behind some means."""
    counts = sorted({int(c) for c in counts})
    if not counts:
        return "n=0"
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]}"


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
        block = trials.drop_duplicates("arm").set_index("arm")["mask_block_size"]

        def line_of(r) -> str:  # one line per strategy (and block size, and any other swept setting)
            parts = [str(r["mask_strategy"])]
            if r["mask_strategy"] == "block":
                parts.append(f"b={block.get(r['arm'])}")
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


# ------------------------------------------------------------------------------------------ FID vs TFLOPs
def _label_colors(labels: list[str], baseline: set[str]) -> dict[str, tuple]:
    """Baseline labels black (then greys), masked ones along viridis as in :func:`_colors`."""
    out = _colors([label for label in labels if label not in baseline])
    out.pop("baseline", None)
    for i, label in enumerate(label for label in labels if label in baseline):
        out[label] = (0.45 * i / (i + 1),) * 3 + (1.0,)
    return out


def _tflops_points(trials: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """:func:`fid_points` of the finished trials that have training TFLOPs, with each trial's ``label`` (its arm and
    other swept settings, :func:`arm_labels`)."""
    done = finished(trials)
    pts = fid_points(done, curves)
    if not len(pts):
        return pts.assign(label=pd.Series(dtype="string"))
    pts = pts[np.isfinite(pts["tflops"].to_numpy(dtype=float)) & np.isfinite(pts["fid"].to_numpy(dtype=float))]
    labels = pd.DataFrame({"trial_id": done["trial_id"].to_numpy(), "label": arm_labels(done).to_numpy()})
    return pts.merge(labels, on="trial_id")


def _label_order(trials: pd.DataFrame, pts: pd.DataFrame) -> list[str]:
    """The labels of ``pts`` with their arms in :func:`arm_order` (labels of one arm in first-seen order)."""
    order = arm_order(trials)
    first = pts.drop_duplicates("label")
    return list(first.sort_values("arm", key=lambda s: s.map(order.index), kind="stable")["label"])


def seed_spread(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per evaluation step of one arm that every seed of ``rows`` reached: ``tflops`` (mean over seeds), ``fid`` (the
    mean), ``low``/``high`` (the band) and ``n``; and what the band is: min-max over 2 seeds, mean ± std (ddof=1) over
    3 or more, none for one seed (``low == high == fid``)."""
    n = rows["trial_id"].nunique()
    agg = rows.groupby("step").agg(tflops=("tflops", "mean"), fid=("fid", "mean"), low=("fid", "min"),
                                   high=("fid", "max"), std=("fid", "std"), n=("trial_id", "nunique"))
    agg = agg[agg["n"] == n].sort_values("tflops")
    if n >= 3:
        agg["low"], agg["high"] = agg["fid"] - agg["std"], agg["fid"] + agg["std"]
        band = "mean ± std"
    else:
        band = "min-max" if n == 2 else ""
    return agg.drop(columns="std"), band


def _draw_spread(ax, rows: pd.DataFrame, label: str, color, dashed: bool) -> bool:
    """The mean over seeds as a line with markers and the band of :func:`seed_spread` shaded around it."""
    spread, band = seed_spread(rows)
    if not len(spread):
        return False
    n = rows["trial_id"].nunique()
    ax.plot(spread["tflops"], spread["fid"], marker="o", ms=4, lw=1.8, color=color, ls="--" if dashed else "-",
            label=f"{label} (n={n}{', band ' + band if band else ''})", gid=f"mean:{label}")
    if band:
        ax.fill_between(spread["tflops"], spread["low"], spread["high"], color=color, alpha=0.15, lw=0,
                        gid=f"band:{label}")
    return True


def _draw_targets(ax, table: pd.DataFrame, targets: list[float] | None, colors: dict, baseline_color) -> list:
    """Each target FID as a dashed grey line; each arm's first crossing of it (its mean curve over seeds, from
    :func:`speedup_table`) as a star of its colour, with the speed-up written beside it; the baseline's crossing as a
    black star. Returns the x of the stars."""
    values = list(dict.fromkeys(table["target_fid"].astype(float))) if len(table) else list(targets or [])
    what = "target FID" + (" (baseline's final FID)" if len(table) and not targets else "")
    for i, value in enumerate(values):
        ax.axhline(value, color="0.35", ls="--", lw=1, gid=f"target:{value}",
                   label=f"{what}: {', '.join(f'{v:.3g}' for v in values)}" if i == 0 else None)
    xs = []
    first = True
    for _, row in table.iterrows():
        x = float(row["arm_tflops"])
        if not (bool(row["reached"]) and np.isfinite(x)):
            continue
        ax.plot([x], [float(row["target_fid"])], marker="*", ms=13, ls="none", color=colors.get(row["arm"], "C1"),
                mec="black", mew=0.6, zorder=5, gid=f"crossing:{row['arm']}",
                label="first crossing of the target (mean over seeds)" if first else None)
        if np.isfinite(row["speedup"]):
            ax.annotate(f"{row['speedup']:.2g}x", (x, float(row["target_fid"])), xytext=(4, 6),
                        textcoords="offset points", fontsize=7, color="0.2")
        xs.append(x)
        first = False
    for value, x in table[["target_fid", "baseline_tflops"]].drop_duplicates().itertuples(index=False):
        if np.isfinite(x):
            ax.plot([x], [value], marker="*", ms=13, ls="none", color=baseline_color, mec="white", mew=0.6, zorder=5,
                    gid="crossing:baseline")
            xs.append(float(x))
    return xs


def _scale_x(ax, xs) -> None:
    """Log x when the positive values span more than 10x, else linear."""
    xs = np.asarray([x for x in xs if np.isfinite(x) and x > 0], dtype=float)
    if len(xs) and xs.max() > 10 * xs.min():
        ax.set_xscale("log")


def _seeds_title(pts: pd.DataFrame) -> str:
    counts = pts.groupby("label")["trial_id"].nunique()
    text = _seeds_text(counts)
    return f"{text} seed{'s' if text != 'n=1' else ''} per arm"


def fid_vs_tflops_figure(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict,
                         targets: list[float] | None = None) -> Figure | None:
    """FID against training TFLOPs (the whole pre-training included) per arm: the mean over seeds at each evaluation
    as a line with markers in a band over seeds (min-max for 2 seeds, mean ± std for 3+), the target FID (``targets``,
    default the baseline's final FID, as :func:`speedup_table`) as a dashed line with each arm's crossing of it, and
    the FID floor of real images where measured. None when there is nothing to draw: no finished trial with a FID
    and training TFLOPs (sweeps from before the TFLOPs columns have none)."""
    pts = _tflops_points(trials, curves)
    if not len(pts):
        return None
    done = finished(trials)
    fig = _figure(7.5, 4.8)
    ax = fig.subplots()
    labels = _label_order(trials, pts)
    baseline = set(pts.loc[pts["arm"] == "baseline", "label"])
    colors = _label_colors(labels, baseline)
    drew = False
    for label in labels:
        drew |= _draw_spread(ax, pts[pts["label"] == label], label, colors[label], label in baseline)
    if not drew:
        return None
    table = speedup_table(trials, curves, targets=targets)
    xs = list(pts["tflops"]) + _draw_targets(ax, table, targets, colors, colors.get(next(iter(baseline), ""), "k"))
    floor = done["fid_floor"].dropna() if "fid_floor" in done else pd.Series(dtype=float)
    if len(floor):
        ax.axhline(float(floor.mean()), color="0.5", ls=":", lw=1.2, label="FID floor (real images)")
    _scale_x(ax, xs)
    ax.set_xlabel("training compute (TFLOPs, pre-training included)")
    ax.set_ylabel(_fid_label(trials))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if len(labels) > 6 else 1)
    backends = ", ".join(sorted(set(done["fid_backend"].dropna()))) or "?"
    samples = ", ".join(str(n) for n in sorted(set(done["fid_num_samples"])))
    _title(fig, spec, trials, f"FID vs training TFLOPs ({backends} FID, {samples} samples; {_seeds_title(pts)})")
    fig.tight_layout()
    return fig


def plot_fid_vs_tflops(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict, path: Path,
                       targets: list[float] | None = None) -> Path | None:
    """Write :func:`fid_vs_tflops_figure` to ``path``; None (and no file at ``path``) when there is nothing to draw."""
    return _save(fid_vs_tflops_figure(trials, curves, spec, targets), path)


def final_samples_figure(sweep_dir: Path, trials: pd.DataFrame) -> Figure | None:
    """The last sample grid of each arm's first finished seed, side by side, titled with the arm, the seed, its
    final FID and (digits) the recognisable share: what a reader should look at before trusting a FID. None when no
    finished trial left a grid."""
    import matplotlib.image as mpimg

    done = finished(trials)
    if not len(done):
        return None
    done = done.assign(_label=arm_labels(done).to_numpy())
    order = arm_order(done)
    firsts = (done.sort_values("seed", kind="stable").groupby("_label", sort=False).head(1)
              .sort_values("arm", key=lambda s: s.map(order.index), kind="stable"))
    layout = SweepDir.of(sweep_dir)
    grids = []
    for _, row in firsts.iterrows():
        pngs = sorted(layout.finetune(row["trial_id"]).samples.glob("step_*.png"))
        if pngs:
            grids.append((row, pngs[-1]))
    if not grids:
        return None
    fig = _figure(3.2 * len(grids), 3.7)
    for ax, (row, png) in zip(np.atleast_1d(fig.subplots(1, len(grids))), grids):
        ax.imshow(mpimg.imread(png), cmap="gray")
        ax.set_axis_off()
        extra = "" if pd.isna(row["recognisable"]) else f", recognisable {row['recognisable']:.2f}"
        ax.set_title(f"{row['_label']} (seed {row['seed']})\nFID {row['fid']:.1f}{extra}", fontsize=8)
    fig.suptitle("final samples, one seed per arm", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the suptitle above the panel titles
    return fig


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


def _save(fig: Figure | None, path: Path) -> Path | None:
    """Write ``fig`` to ``path`` (None: nothing to draw, and no stale file left at ``path``)."""
    if fig is None:
        Path(path).unlink(missing_ok=True)
        return None
    fig.savefig(path, dpi=DPI)
    return path
