"""The speed-up's pictures: FID against training TFLOPs per arm, with the seeds' band, the target FID and each
arm's crossing of it (``plots/fid_vs_tflops.png``), and the final sample grid of each arm
(``plots/final_samples.png``), what a reader should look at before trusting a FID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..layout import SweepDir, step_files
from .analysis import arm_labels, arm_order, fid_points, finished, speedup_table
from .figures import _colors, _fid_label, _figure, _save, _seeds_text, _title


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
        pngs = step_files(layout.finetune(row["trial_id"]).samples, ".png")
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
