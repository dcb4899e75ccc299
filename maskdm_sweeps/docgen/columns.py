"""The tables of the results files (docs/results.md): every column of ``trials.parquet`` and ``curves.parquet`` with
its pandas dtype (read from the results package), unit and meaning (written here; a column without one is an error)."""

from __future__ import annotations

from ..maskdm.strategies import STRATEGIES
from .markdown import md_table


def _choices(names: list[str]) -> str:
    """```a`, `b` or `c``` for the names."""
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


_RATELESS = [name for name, cls in STRATEGIES.items() if "rate" not in cls.model_fields]  # their arms: no rate

TRIAL_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "sweep": ("", "sweep name"),
    "trial_id": ("", "`t-` + a hash of every setting that affects the trial; the directory under `trials/`"),
    "arm": ("", "`baseline`, `patch r=0.5`, `block b=4 r=0.9` or `crop c=11`: the seeds of one arm average"),
    "label": ("", "the trial's axis values as text, e.g. `mask.rate=0.5 seed=1`"),
    "stage": ("", "`finetune`: a row describes the trial's last stage"),
    "status": (
        "",
        "`finished`, `stopped` (early stopping, or an arm behind: `sweep.stop_behind`), `failed` or `incomplete` "
        "(killed, running, not resumed)",
    ),
    "error": ("", "why a failed trial failed (the last line of Ray Tune's error.txt); null otherwise"),
    "mask_strategy": ("", f"{_choices(list(STRATEGIES))}; null for the baseline"),
    "mask_rate": ("fraction", f"nominal mask rate of pre-training; NaN for the baseline and for {_choices(_RATELESS)}"),
    "mask_block_size": ("patches", "block side (block strategy only)"),
    "mask_crop_size": ("patches", "visible window side (crop strategy only)"),
    "effective_mask_rate": (
        "fraction",
        "share of patches pre-training really dropped (counting rule); 0 for the baseline",
    ),
    "pretrain_steps": ("steps", "configured pre-training steps (0: baseline)"),
    "finetune_steps": ("steps", "configured fine-tuning steps"),
    "steps_done": ("steps", "fine-tuning steps completed"),
    "seed": ("", "trial seed"),
    "fid": ("FID", "final FID of fine-tuning (backend in `fid_backend`); NaN without one"),
    "fid_best": ("FID", "lowest FID over fine-tuning's evaluations"),
    "loss_final": ("", "final fine-tuning training loss (eps-MSE)"),
    "recognisable": (
        "fraction",
        "share of the final FID samples the digits classifier puts in one class with "
        "confidence >= 0.9 (digits-classifier backend only; NaN otherwise)",
    ),
    "fid_floor": (
        "FID",
        "FID of `fid_num_samples` real training images against the same reference statistics and "
        "features: how low this protocol goes",
    ),
    "fid_noise_std": (
        "FID",
        "standard deviation of the final model's FID over `eval.fid_repeats` sampling seeds "
        "(the evaluation noise); NaN when not measured",
    ),
    "train_tflops": (
        "TFLOPs",
        "training compute of the trial run alone: `finetune_tflops` + `pretrain_tflops` "
        "(its whole pre-training); the x axis of the speed-up",
    ),
    "finetune_tflops": (
        "TFLOPs",
        "training compute of its fine-tuning (forward + backward, counted from the model's shapes)",
    ),
    "pretrain_tflops": (
        "TFLOPs",
        "training compute of its pre-training to the length it asked for, in full, on the "
        "kept patches (0 for the baseline): what the arm costs alone, whatever else the sweep held",
    ),
    "pretrain_tflops_share": (
        "TFLOPs",
        "its share of the pre-training actually trained: each stretch of a shared "
        "run split evenly over the trials that need it; the shares add up to the sweep's "
        "totals",
    ),
    "eval_tflops": ("TFLOPs", "compute of its evaluations (sampling and FID features), fine-tuning and pre-training"),
    "device": ("", "`gpu` or `cpu`: what the trial's compute is counted in"),
    "devices_per_trial": ("devices", "`gpus_per_trial` on GPUs; on a CPU, one per worker process"),
    "device_hours": ("device-hours", "`wall_seconds` x `devices_per_trial` / 3600: what the report compares arms by"),
    "gpu_hours": ("GPU-hours", "`wall_seconds` x `gpus_per_trial` / 3600 (0 on a CPU: no GPU was held)"),
    "gpus_per_trial": (
        "GPUs",
        "every GPU a trial holds, `resources.gpus` (a fraction counted as 1) x `resources.workers`; 0 on a CPU",
    ),
    "wall_seconds": ("s", "fine-tuning wall time plus `pretrain_wall_seconds` (its own pre-training length in full)"),
    "finetune_wall_seconds": ("s", "fine-tuning wall time"),
    "pretrain_wall_seconds": (
        "s",
        "wall time of its pre-training up to the length it asked for, as recorded when "
        "that milestone was kept (0 for the baseline)",
    ),
    "pretrain_wall_seconds_share": (
        "s",
        "its share of the pre-training wall time actually spent, split like "
        "`pretrain_tflops_share` (0 for the baseline)",
    ),
    "mlflow_run_id": ("", "the fine-tuning stage's MLflow child run; null when not tracked"),
    "pretrain_trial_id": ("", "`pre-<pretrain_key>`; null for the baseline"),
    "pretrain_key": (
        "",
        "hash of the pre-training run's settings, its length aside when nothing depends on it: "
        "`<output_dir>/_pretrain/<key>/`",
    ),
    "pretrain_reused": ("", "its pre-training length was kept by an earlier sweep; this one trained none of it"),
    "pretrain_shared_by": (
        "trials",
        "how many trials of the sweep the pre-training run fed, at any of its lengths (0 for the baseline)",
    ),
    "fid_backend": ("", "`inception` or `digits-classifier` (never compare across them)"),
    "fid_num_samples": ("samples", "samples per FID"),
    "fid_reference": ("", "reference set of the FID, `<dataset>:<key>`"),
}
CURVE_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "trial_id": ("", "the trial (a shared pre-training's curve appears under every trial it fed)"),
    "stage": ("", "`pretrain` or `finetune` (steps restart at each stage)"),
    "step": ("steps", "optimizer step of the stage"),
    "metric": (
        "",
        "`train/loss`, `train/grad_norm`, `train/lr`, `train/images_per_second`, "
        "`train/effective_mask_rate`, `eval/fid`, `eval/fid_best`",
    ),
    "value": ("", "the metric's value (FID for `eval/*`)"),
}


def _columns_table(columns: dict[str, str], docs: dict[str, tuple[str, str]], file: str) -> str:
    """A column table (name, dtype, unit, meaning); every column needs an entry in ``docs``."""
    missing = [c for c in columns if c not in docs]
    if missing:
        raise KeyError(f"{file} columns without a description in {__name__}: {missing}")
    rows = [[f"`{c}`", f"`{dtype}`", docs[c][0] or "-", docs[c][1]] for c, dtype in columns.items()]
    return md_table(["column", "dtype", "unit", "meaning"], rows)


def results_columns_markdown() -> str:
    """The columns of ``trials.parquet`` and ``curves.parquet`` with their pandas dtypes, units and meanings."""
    from ..results import CURVE_COLUMNS, CURVES_FILE, TRIAL_COLUMNS, TRIALS_FILE

    return "\n\n".join(
        [
            f"`{TRIALS_FILE}`, one row per trial (then one column per other swept key, dots become underscores):",
            _columns_table(TRIAL_COLUMNS, TRIAL_COLUMN_DOCS, TRIALS_FILE),
            f"`{CURVES_FILE}`, long format, one row per reported metric value:",
            _columns_table(CURVE_COLUMNS, CURVE_COLUMN_DOCS, CURVES_FILE),
        ]
    )
