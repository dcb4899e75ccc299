"""``report.md``: the tables that answer a sweep's question (FID by arm, against the baseline at equal steps and at
equal compute in device-hours, the best trial)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import comparison_table, compute_unit, fid_at_budget, fid_by_step, finished
from ..layout import SweepDir, read_json
from .collect import load, read_spec
from .columns import STATUSES


# ------------------------------------------------------------------------------------------------- markdown
def _cell(value: Any, fmt: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, fmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, floatfmt: str | dict[str, str] = ".2f", index: bool = False) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned); NaN and nulls print as an en dash."""
    if index:
        df = df.reset_index()
    fmts = floatfmt if isinstance(floatfmt, dict) else {}
    default = ".2f" if isinstance(floatfmt, dict) else floatfmt
    header = [str(c) for c in df.columns]
    body = [[_cell(v.item() if hasattr(v, "item") else v, fmts.get(c, default)) for c, v in zip(df.columns, row)]
            for row in df.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- sections
def _fid_name(trials: pd.DataFrame) -> str:
    backends = sorted(set(trials["fid_backend"].dropna()))
    samples = sorted(set(trials["fid_num_samples"]))
    return f"FID ({', '.join(backends) or '?'} features, {', '.join(map(str, samples))} samples; lower is better)"


def _header(sweep_dir: Path, spec: dict, trials: pd.DataFrame) -> list[str]:
    name = spec.get("name") or (trials["sweep"].iloc[0] if len(trials) else sweep_dir.name)
    lines = [f"# Sweep `{name}`", ""]
    if spec.get("description"):
        lines += [str(spec["description"]).strip(), ""]
    counts = trials["status"].value_counts()
    status = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)
    lines.append(f"- trials: {len(trials)} ({status or 'none'})")
    if len(trials):
        lines.append(f"- metric: {_fid_name(trials)}")
        refs = sorted(set(trials["fid_reference"].dropna()))
        if refs:
            lines.append(f"- FID reference statistics: {', '.join(refs)}")
    unit, _ = compute_unit(trials)
    lines.append(f"- compute: {_total_device_hours(trials):.3g} {unit} in all (each pre-training counted once)")
    if unit == "CPU-hours":
        lines.append("- a CPU run (no GPU held, so `gpu_hours` is 0): CPU-hours are wall-clock hours x worker "
                     "processes, and measure contention for the cores as much as cost")
    lines.append(f"- {unit} of a trial: its fine-tuning plus an even share of the pre-training it started from, "
                 "wall-clock x the devices it holds (a fractional GPU counts as a whole one)")
    return lines + [""]


def _total_device_hours(trials: pd.DataFrame) -> float:
    if not len(trials):
        return 0.0
    ft = (trials["finetune_wall_seconds"].fillna(0) * trials["devices_per_trial"]).sum()
    pre = (trials["pretrain_wall_seconds_share"].fillna(0) * trials["pretrain_shared_by"].clip(lower=1)
           * trials["devices_per_trial"]).groupby(trials["pretrain_key"].fillna("")).first().sum()
    return float(ft + pre) / 3600.0


def _by_arm(trials: pd.DataFrame) -> list[str]:
    table = comparison_table(trials)
    lines = ["## FID by arm", "",
             f"{_fid_name(trials)} after fine-tuning, over seeds (finished trials only; std: sample standard "
             "deviation, ddof=1; min: the best seed). Effective mask rate: the fraction of patches pre-training "
             "dropped.", ""]
    show = table.drop(columns=["mask_strategy", "mask_rate"]).rename(columns={
        "effective_mask_rate": "eff. mask rate", "n_trials": "trials", "n_seeds": "seeds", "fid_mean": "FID mean",
        "fid_std": "FID std", "fid_min": "FID min", "device_hours_mean": f"{compute_unit(trials)[1]} mean"})
    lines.append(markdown_table(show, {"eff. mask rate": ".3f", f"{compute_unit(trials)[1]} mean": ".3g"}))
    return lines + [""]


def _vs_baseline(trials: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    if not (trials["arm"] == "baseline").any():
        return []
    table, counts = fid_by_step(trials, curves, counts=True)
    lines = ["## Against the baseline at equal fine-tuning steps", ""]
    if table.empty or "baseline" not in table.columns:
        return lines + ["No finished baseline trial: nothing to compare against.", ""]
    seeds = finished(trials).groupby("arm").size()
    lines += [f"Mean {_fid_name(trials)} over seeds at each fine-tuning step (evaluations during fine-tuning and the "
              "final one; finished trials only). In parentheses: the difference to the baseline at that step "
              "(negative: the masked pre-training helps). A cell marked `*k` is a mean over k seeds only (the "
              "others have no evaluation at that step).", ""]
    shown = pd.DataFrame(index=table.index)
    for arm in table.columns:
        cells = []
        for step, v in table[arm].items():
            b = table.at[step, "baseline"]
            text = _cell(v, ".2f")
            if arm != "baseline" and not (math.isnan(v) or math.isnan(b)):
                text += f" ({v - b:+.2f})"
            k = int(counts.at[step, arm])
            if 0 < k < int(seeds.get(arm, 0)):
                text += f" *{k}"
            cells.append(text)
        shown[arm] = cells
    shown.index.name = "fine-tuning step"
    lines.append(markdown_table(shown, index=True))
    last = table.dropna(subset=["baseline"])
    if len(last):
        step = last.index.max()
        row = last.loc[step].drop("baseline").dropna()
        if len(row):
            better = [a for a, v in row.items() if v < last.loc[step, "baseline"]]
            lines += ["", f"At step {step}, {len(better)} of {len(row)} masked arms have a lower mean FID than the "
                      f"baseline ({last.loc[step, 'baseline']:.2f})" + (f": {', '.join(better)}." if better else ".")]
    return lines + [""]


def _equal_compute(trials: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    budget, table = fid_at_budget(trials, curves)
    unit, short = compute_unit(trials)
    lines = [f"## At equal {unit}", ""]
    if not len(table):
        return lines + ["No finished trial.", ""]
    cheapest = table.loc[table["device_hours_mean"].idxmin(), "arm"]
    lines += [f"Mean {unit} and mean FID per arm (finished trials). \"FID at budget\": each trial's last FID "
              f"measured within {budget:.3g} {unit} (the mean cost of the cheapest arm, {cheapest}; fine-tuning "
              "time taken as linear in steps), averaged over the seeds that had one (\"reached\"). Pareto: no other "
              "arm is both cheaper and better.", ""]
    show = table.rename(columns={"n_seeds": "seeds", "device_hours_mean": f"{short} mean", "fid_mean": "FID mean",
                                 "fid_at_budget": f"FID at {budget:.3g} {short}", "n_reached": "reached"})
    lines.append(markdown_table(show, {f"{short} mean": ".3g"}))
    best = table.loc[table["fid_mean"].idxmin()]
    sentences = [f"Lowest mean FID: {best['arm']} ({best['fid_mean']:.2f} at {best['device_hours_mean']:.3g} "
                 f"{unit} per trial)."]
    at = table.dropna(subset=["fid_at_budget"])
    if len(at):
        win = at.loc[at["fid_at_budget"].idxmin()]
        if len(at) == 1:
            sentences.append(f"At equal compute ({budget:.3g} {unit}), only {win['arm']} has a FID "
                             f"({win['fid_at_budget']:.2f}).")
        else:
            sentences.append(f"At equal compute ({budget:.3g} {unit}), the lowest FID is reached by {win['arm']} "
                             f"({win['fid_at_budget']:.2f}).")
    missing = table.loc[table["n_reached"] == 0, "arm"].tolist()
    if missing:
        sentences.append(f"No FID within that budget for: {', '.join(missing)}.")
    sentences.append(f"Pareto-optimal arms: {', '.join(table.loc[table['pareto'], 'arm'])}.")
    return lines + ["", " ".join(sentences), ""]


def _best(trials: pd.DataFrame) -> list[str]:
    done = finished(trials)
    lines = ["## Best trial", ""]
    if not len(done):
        return lines + ["No finished trial.", ""]
    b = done.loc[done["fid"].idxmin()]
    rows = [("trial", f"`{b['trial_id']}`"), ("arm", b["arm"]), ("label", b["label"]), ("FID", f"{b['fid']:.2f}"),
            ("best FID during fine-tuning", _cell(b["fid_best"], ".2f")), ("seed", str(b["seed"])),
            (compute_unit(trials)[0], f"{b['device_hours']:.3g}"), ("pre-training", _cell(b["pretrain_trial_id"], "")),
            ("MLflow run", _cell(b["mlflow_run_id"], ""))]
    return lines + [markdown_table(pd.DataFrame(rows, columns=["", "value"])), ""]


def _not_finished(sweep_dir: Path, trials: pd.DataFrame) -> list[str]:
    lines = []
    rest = trials[trials["status"] != "finished"]
    if len(rest):
        lines += ["## Trials that did not finish", "",
                  "Their metrics in `trials.parquet` are the last ones `metrics.jsonl` recorded.", "",
                  markdown_table(rest[["trial_id", "arm", "label", "status", "steps_done", "finetune_steps",
                                       "error"]]), ""]
    plan = read_json(SweepDir.of(sweep_dir).plan_file) or {}
    missing = [t for t in plan.get("trials", []) if t.get("trial_id") not in set(trials["trial_id"])]
    if missing:
        lines += [f"{len(missing)} planned trials never started (no `trials/<id>/finetune/`): "
                  + ", ".join(f"`{t['trial_id']}` ({t.get('label', '')})" for t in missing) + ".", ""]
    return lines


def render_report(sweep_dir: Path, trials: pd.DataFrame, curves: pd.DataFrame) -> str:
    sweep_dir = Path(sweep_dir)
    spec = read_spec(sweep_dir)
    lines = _header(sweep_dir, spec, trials)
    if len(trials):
        lines += _by_arm(trials) + _vs_baseline(trials, curves) + _equal_compute(trials, curves) + _best(trials)
    lines += _not_finished(sweep_dir, trials)
    plots = SweepDir.of(sweep_dir).plots
    pngs = sorted(plots.glob("*.png")) if plots.is_dir() else []
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}]({plots.name}/{p.name})" for p in pngs] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(sweep_dir: Path, trials: pd.DataFrame | None = None, curves: pd.DataFrame | None = None) -> Path:
    """Write ``<sweep_dir>/report.md`` (from the parquet files, computed first when missing or stale)."""
    sweep_dir = Path(sweep_dir)
    if trials is None or curves is None:
        trials, curves = load(sweep_dir)
    path = SweepDir.of(sweep_dir).report
    path.write_text(render_report(sweep_dir, trials, curves))
    return path


__all__ = ["markdown_table", "render_report", "write_report"]
