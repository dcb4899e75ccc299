"""A sweep's results from the files it wrote: parquet tables, a markdown report and plots (no ray, no mlflow).

    trials, curves = load("results/mask_rate")      # trials.parquet, curves.parquet (written first if missing)
    paths = write_all("results/mask_rate")          # parquet + report.md + plots/*.png
    print(comparison_table(trials))                 # FID by arm over seeds
    print(speedup_table(trials, curves))            # compute to reach the baseline's final FID, with intervals
"""

from __future__ import annotations

from pathlib import Path

from .analysis import comparison_table, fid_at_budget, fid_by_step, fid_points, speedup_table
from ..layout import CURVES_PARQUET as CURVES_FILE  # the names results users import, owned by the layout
from ..layout import TRIALS_PARQUET as TRIALS_FILE
from .collect import collect, load, write_results, write_tables
from .columns import CURVE_COLUMNS, TRIAL_COLUMNS
from .plots import write_plots
from .report import headline, headline_metrics, markdown_table, write_report


def write_all(sweep_dir: Path) -> dict[str, Path]:
    """Write ``trials.parquet``, ``curves.parquet``, ``plots/*.png`` and ``report.md`` (which links the plots).

    Returns name -> path: ``trials``, ``curves``, ``report`` and ``plot_<stem>`` per plot (``plot_curves``,
    ``plot_fid_vs_mask_rate``, ``plot_fid_vs_device_hours``, ``plot_fid_vs_tflops``).
    """
    sweep_dir = Path(sweep_dir)
    paths, trials, curves = write_tables(sweep_dir)
    for png in write_plots(sweep_dir, trials, curves):
        paths[f"plot_{png.stem}"] = png
    paths["report"] = write_report(sweep_dir, trials, curves)
    return paths


__all__ = [
    "CURVE_COLUMNS", "CURVES_FILE", "TRIAL_COLUMNS", "TRIALS_FILE", "collect", "comparison_table", "fid_at_budget",
    "fid_by_step", "fid_points", "headline", "headline_metrics", "load", "markdown_table", "speedup_table",
    "write_all", "write_plots", "write_report", "write_results",
]
