"""``report.md``: the tables that answer a sweep's question (FID by arm, against the baseline at equal steps and at
equal compute in device-hours, the best trial)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .analysis import (arm_labels, clearly_lower, comparison_table, compute_unit, evaluation_noise, fid_at_budget,
                       fid_by_step, finished, group_keys, report_settings, speedup_table)
from ..files import read_json
from ..layout import SweepDir, read_notices
from .collect import load, read_spec
from ..naming import mlflow_key
from .adaptive_report import rounds_section, seeds_not_asked
from .columns import STATUSES
from .markdown import cell as _cell
from .markdown import markdown_table
from .membership import trials_outside_plan


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
        lines += _noise_lines(trials)
    unit, _ = compute_unit(trials)
    lines.append(f"- compute: {_total_device_hours(trials):.3g} {unit} in all, as trained (each stretch of a "
                 "pre-training run counted once, however many trials start from it)")
    if len(trials) and trials["train_tflops"].notna().any():
        lines.append(f"- training compute: {_total_train_tflops(trials):.4g} TFLOPs as trained (each stretch of "
                     f"pre-training counted once; forward + backward counted from the model's shapes), evaluation "
                     f"{trials['eval_tflops'].sum():.4g} TFLOPs")
    if unit == "CPU-hours":
        lines.append("- a CPU run (no GPU held, so `gpu_hours` is 0): CPU-hours are wall-clock hours x worker "
                     "processes, and measure contention for the cores as much as cost")
    lines.append(f"- {unit} and TFLOPs of a trial (every comparison below): its fine-tuning plus its own "
                 "pre-training to the length it asked for, in full, as if it ran alone (a run shared with other "
                 "trials, or served from an earlier sweep, does not make an arm cheaper); wall-clock x the devices "
                 "it holds (a fractional GPU counts as a whole one)")
    return lines + [""]


def _noise_lines(trials: pd.DataFrame) -> list[str]:
    noise = evaluation_noise(trials)
    lines = []
    if not math.isnan(noise["floor"]):
        lines.append(f"- FID floor: {noise['floor']:.2f} (real training images against the same reference "
                     "statistics, as many as the samples, the same features: about what a model that reproduced "
                     "the data exactly would score)")
    if noise["noise_trials"]:
        best = "" if math.isnan(noise["best_noise_std"]) else f"; the best trial's {noise['best_noise_std']:.2f}"
        lines.append(f"- evaluation noise: one model's FID moves by {noise['noise_std']:.2f} (standard deviation over "
                     f"sampling seeds, mean of {noise['noise_trials']} trials{best}); differences below twice that "
                     "are not called wins")
    else:
        lines.append("- evaluation noise: not measured (set `eval.fid_repeats` to 2 or more)")
    return lines


def _total_train_tflops(trials: pd.DataFrame) -> float:
    """What was trained for the sweep: every fine-tuning plus each stretch of pre-training once (the shares)."""
    return float(trials["finetune_tflops"].fillna(0).sum() + trials["pretrain_tflops_share"].fillna(0).sum())


def _total_device_hours(trials: pd.DataFrame) -> float:
    if not len(trials):
        return 0.0
    wall = trials["finetune_wall_seconds"].fillna(0) + trials["pretrain_wall_seconds_share"].fillna(0)
    return float((wall * trials["devices_per_trial"]).sum()) / 3600.0


def _by_arm(trials: pd.DataFrame) -> list[str]:
    table = comparison_table(trials)
    lines = ["## FID by arm", "",
             f"{_fid_name(trials)} after fine-tuning, over seeds (finished trials only; std: sample standard "
             "deviation, ddof=1; min: the best seed). Effective mask rate: the fraction of patches pre-training "
             "dropped.", ""]
    show = table.drop(columns=["mask_strategy", "mask_rate", "recognisable_mean"]).rename(columns={
        "train_tflops_mean": "TFLOPs mean",
        "effective_mask_rate": "eff. mask rate", "n_trials": "trials", "n_seeds": "seeds", "fid_mean": "FID mean",
        "fid_std": "FID std", "fid_min": "FID min", "device_hours_mean": f"{compute_unit(trials)[1]} mean"})
    done = finished(trials)
    if done["recognisable"].notna().any():
        by_label = done.groupby(arm_labels(done, group_keys(trials)[1:]).to_numpy())["recognisable"]
        stats = {label: (g.mean(), g.min(), g.max()) for label, g in by_label}
        cells = []
        for label in arm_labels(table, group_keys(trials)[1:]):
            mean, low, high = stats.get(label, (math.nan,) * 3)
            cells.append("–" if math.isnan(mean) else f"{mean:.2f} ({low:.2f}-{high:.2f})")
        show["recognisable"] = cells
        lines[-2] += (" Recognisable: the share of final samples the digits classifier puts in one class with "
                      "confidence >= 0.9, mean over seeds (min-max); held-out real digits score 0.96.")
    lines.append(markdown_table(show, {"eff. mask rate": ".3f", f"{compute_unit(trials)[1]} mean": ".3g",
                                       "TFLOPs mean": ".4g"}))
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
    lines += ["", _final_comparison(trials)]
    return lines + [""]


def _final_comparison(trials: pd.DataFrame) -> str:
    """Which arms end with a lower FID than the baseline beyond the seeds' spread and the evaluation noise."""
    done = finished(trials)
    fids = done.groupby("arm")["fid"]
    if "baseline" not in fids.groups:
        return "No finished baseline trial at the end of fine-tuning."
    base = fids.get_group("baseline").to_numpy()
    noise = evaluation_noise(trials)["noise_std"]
    arms = [a for a in dict.fromkeys(done["arm"]) if a != "baseline"]
    lower = [a for a in arms if fids.get_group(a).mean() < base.mean()]
    clear = [a for a in lower if clearly_lower(fids.get_group(a).to_numpy(), base, noise)]
    text = (f"At the end of fine-tuning, {len(lower)} of {len(arms)} masked arms have a lower mean final FID than "
            f"the baseline ({base.mean():.2f}, {len(base)} seeds)")
    if not lower:
        return text + "."
    text += f" ({', '.join(lower)})"
    if clear:
        return text + f"; beyond the seeds' spread and twice the evaluation noise: {', '.join(clear)}."
    return text + ", but every difference is inside the seeds' spread or the evaluation noise: not a win."


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
    noise = evaluation_noise(trials)["noise_std"]
    if not math.isnan(noise):
        sentences.append(f"FID differences under {2 * noise:.2f} (twice the evaluation noise) are not wins.")
    return lines + ["", " ".join(sentences), ""]


def speedup_sentence(row: pd.Series, confidence: float) -> str:
    """One arm at one target, in words: e.g. ``patch r=0.9: reaches the baseline's final FID 41.2 with 0.31x its
    compute, a speed-up of 3.2x (90% interval 2.6-3.9x, 3 seeds; baseline 3 seeds)``."""
    what = "the baseline's final FID" if row["target"] == "baseline final FID" else "FID"
    seeds = f"{row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}; baseline {row['n_baseline_seeds']}"
    head = f"{row['arm']}: "
    if not row["reached"]:
        return head + f"does not reach {what} {row['target_fid']:.2f} within its budget ({seeds})."
    if not row["baseline_reached"]:
        return head + (f"reaches {what} {row['target_fid']:.2f} at {row['arm_tflops']:.4g} TFLOPs; the baseline "
                       f"never does ({seeds}).")
    text = (head + f"reaches {what} {row['target_fid']:.2f} with {1 / row['speedup']:.2f}x the baseline's training "
            f"compute ({row['arm_tflops']:.4g} against {row['baseline_tflops']:.4g} TFLOPs), a speed-up of "
            f"{row['speedup']:.2f}x")
    if math.isnan(row["speedup_low"]):
        return text + f" (one seed a side: no interval, not a result; {seeds})."
    text += f" ({confidence:.0%} interval {_interval(row['speedup_low'], row['speedup_high'])}, {seeds})"
    return text + {"faster": ".", "slower": ": slower than the baseline.",
                   "no clear difference": ": the interval includes 1, so no clear difference."}.get(row["verdict"], ".")


def headline(sweep_dir: Path, trials: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The sweep's answer: the speed-up table under the spec's ``report`` settings and one sentence per row."""
    settings = report_settings(read_spec(Path(sweep_dir)))
    table = speedup_table(trials, curves, **settings)
    return table, [speedup_sentence(row, settings["confidence"]) for _, row in table.iterrows()]


def headline_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The speed-up table as MLflow metrics of the sweep's parent run: ``speedup/<arm>`` (with ``_low``, ``_high``)
    and ``target_fid/<arm>``, the arm's name made MLflow-safe; a target other than the first adds ``@<target>``."""
    metrics: dict[str, float] = {}
    first = table["target_fid"].iloc[0] if len(table) else None
    for _, row in table.iterrows():
        name = mlflow_key(str(row["arm"]))
        if row["target_fid"] != first:
            name += f"@{row['target_fid']:g}"
        for key, col in (("speedup", "speedup"), ("speedup_low", "speedup_low"), ("speedup_high", "speedup_high"),
                         ("target_fid", "target_fid"), ("tflops_to_target", "arm_tflops")):
            value = float(row[col])
            if math.isfinite(value):
                metrics[f"{key}/{name}"] = value
    return metrics


def _interval(low: float, high: float) -> str:
    """``2.60-3.90x``; an end at infinity (resamples whose baseline never reaches the target) as unbounded."""
    if math.isinf(high):
        return f"{low:.2f}x to unbounded: in some resamples the baseline never gets there"
    return f"{low:.2f}-{high:.2f}x"


def _speedup(trials: pd.DataFrame, curves: pd.DataFrame, spec: dict) -> list[str]:
    settings = report_settings(spec)
    table = speedup_table(trials, curves, **settings)
    if not len(table):
        return []
    confidence = settings["confidence"]
    lines = ["## Speed-up", "",
             "The training compute each arm needs for its mean FID curve over seeds to first reach the target FID, "
             "against the baseline's (linear interpolation between evaluations). Compute is training TFLOPs "
             "(forward + backward, counted from the model's shapes), an arm charged its whole pre-training to its "
             "length even where the sweep shared the run; evaluation is not counted. Interval: "
             f"{confidence:.0%} bootstrap over seeds (the arm's and the baseline's resampled apart).", ""]
    lines += [f"- {speedup_sentence(row, confidence)}" for _, row in table.iterrows()]
    faster = table.loc[table["verdict"] == "faster", "arm"].unique().tolist()
    lines.append("")
    if faster:
        lines.append(f"Masked pre-training pays in this run for: {', '.join(faster)} (the whole interval above 1).")
    else:
        lines.append("Masked pre-training does not pay in this run: no arm reaches the target faster with its whole "
                     "interval above 1.")
    show = table.drop(columns=["target"]).rename(columns={
        "target_fid": "target FID", "n_seeds": "seeds", "n_baseline_seeds": "baseline seeds",
        "arm_tflops": "arm TFLOPs", "baseline_tflops": "baseline TFLOPs", "speedup": "speed-up",
        "speedup_low": "low", "speedup_high": "high", "reached": "reached", "baseline_reached": "baseline reached"})
    return lines + ["", markdown_table(show, {"arm TFLOPs": ".4g", "baseline TFLOPs": ".4g"}), ""]


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


def _notices(sweep_dir: Path, trials: pd.DataFrame) -> list[str]:
    """What the trial processes noticed (skipped images, checkpoint fallbacks, damaged files): every number below
    was made with these in force."""
    notices = read_notices(sweep_dir)
    if not notices:
        return []
    labels = dict(zip(trials["trial_id"], trials["label"])) if len(trials) else {}
    things = "thing" if len(notices) == 1 else "things"
    lines = ["## Notices", "", f"{len(notices)} {things} the trial processes noticed while this sweep ran (each once; "
             "`events.jsonl` holds them with their times):", ""]
    for e in notices:
        unit = str(e.get("unit", "?"))
        who = f"`{unit}` ({labels[unit]})" if unit in labels else f"`{unit}`"
        lines.append(f"- {who}: {e.get('message', '')}")
    return lines + [""]


def _not_finished(sweep_dir: Path, trials: pd.DataFrame) -> list[str]:
    lines = []
    rest = trials[trials["status"] != "finished"]
    if len(rest):
        lines += ["## Trials that did not finish", "",
                  "Their metrics in `trials.parquet` are the last ones `metrics.jsonl` recorded.", "",
                  markdown_table(rest[["trial_id", "arm", "label", "status", "steps_done", "finetune_steps",
                                       "error"]]), ""]
    plan = read_json(SweepDir.of(sweep_dir).plan_file) or {}
    unasked = seeds_not_asked(sweep_dir)  # an adaptive sweep's seeds beyond what its rounds asked for
    missing = [t for t in plan.get("trials", []) if t.get("trial_id") not in set(trials["trial_id"]) | unasked]
    if missing:
        lines += [f"{len(missing)} planned trials never started (no `trials/<id>/finetune/`): "
                  + ", ".join(f"`{t['trial_id']}` ({t.get('label', '')})" for t in missing) + ".", ""]
    outside = trials_outside_plan(sweep_dir)
    if outside:
        lines += [f"Warning: {len(outside)} trial directories that this sweep's `plan.json` does not hold (another "
                  "spec's) are left out of every table: " + ", ".join(f"`{t}`" for t in outside) + ".", ""]
    return lines


def render_report(sweep_dir: Path, trials: pd.DataFrame, curves: pd.DataFrame) -> str:
    sweep_dir = Path(sweep_dir)
    spec = read_spec(sweep_dir)
    lines = _header(sweep_dir, spec, trials) + _notices(sweep_dir, trials)
    if len(trials):
        lines += (rounds_section(sweep_dir, trials, spec) + _speedup(trials, curves, spec) + _by_arm(trials)
                  + _vs_baseline(trials, curves) + _equal_compute(trials, curves) + _best(trials))
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


__all__ = ["headline", "headline_metrics", "markdown_table", "render_report", "speedup_sentence", "write_report"]
