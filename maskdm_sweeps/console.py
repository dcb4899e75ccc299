"""Terminal output for long work: a rich progress bar fed by the trainer's Reporter protocol."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .trainer.reporter import NullReporter

console = Console(stderr=True)
LOG_WIDTH = 1000  # a table printed to a file or a pipe takes the width its content needs, up to this


def output_console() -> Console:
    """Standard output for tables: the terminal's width on a terminal; in a log file or a pipe the width the content
    needs (rich's default there is 80 columns, which wraps every label), or ``COLUMNS`` when it is set."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=LOG_WIDTH)


def stage_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class ProgressReporter(NullReporter):
    """Moves one progress bar per stage: step, latest loss, latest FID."""

    def __init__(self, progress: Progress, description: str, total_steps: int):
        self.progress = progress
        self.task = progress.add_task(description, total=total_steps, status="")
        self.loss: float | None = None
        self.fid: float | None = None

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.loss = values.get("train/loss", self.loss)
        self.fid = values.get("eval/fid", self.fid)
        status = " ".join(
            s
            for s in (
                f"loss {self.loss:.4f}" if self.loss is not None else "",
                f"FID {self.fid:.2f}" if self.fid is not None else "",
            )
            if s
        )
        self.progress.update(self.task, completed=step, status=status)

    def artifact(self, step: int, path: Path) -> None:
        self.progress.update(self.task, completed=step)


def print_results_summary(sweep_dir: Path, paths: dict[str, Path], tracking_uri: str | None) -> None:
    """The comparison table (FID by arm over seeds), where the files are, and how to open the MLflow UI."""
    import math

    import pandas as pd
    from rich.table import Table

    from .layout import SweepDir
    from .results import comparison_table
    from .results.analysis import compute_unit, group_keys

    out = output_console()
    trials_path = SweepDir.of(sweep_dir).trials_parquet
    if trials_path.exists():
        trials = pd.read_parquet(trials_path)
        table = comparison_table(trials)
        swept = group_keys(trials)[1:]  # other swept settings that split an arm (e.g. finetune_init_from)
        view = Table(title=f"FID by arm ({Path(sweep_dir).name})")
        digits = table["recognisable_mean"].notna().any()
        for col in (
            "arm",
            *swept,
            "eff. mask rate",
            "seeds",
            "FID mean",
            "FID std",
            "TFLOPs",
            f"{compute_unit(trials)[1]} mean",
            *(["recognisable"] if digits else []),
        ):
            if col == "arm":  # whole arm names: the other columns wrap their headers instead
                view.add_column(col, no_wrap=True, min_width=max([len(str(a)) for a in table["arm"]] + [3]))
            else:
                view.add_column(col, justify="left" if col in swept else "right")

        def num(v: float | int | None, fmt: str) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        for _, row in table.iterrows():
            view.add_row(
                str(row["arm"]),
                *(str(row[c]) for c in swept),
                num(row["effective_mask_rate"], ".2f"),
                f"{row['n_seeds']}/{row['n_trials']}",
                num(row["fid_mean"], ".2f"),
                num(row["fid_std"], ".2f"),
                num(row["train_tflops_mean"], ".4g"),
                num(row["device_hours_mean"], ".3g"),
                *([num(row["recognisable_mean"], ".2f")] if digits else []),
            )
        out.print(view)
        from .results import headline, load

        _, sentences = headline(sweep_dir, *load(sweep_dir))
        for sentence in sentences:  # plain print: a log file keeps whole sentences
            print(f"speed-up: {sentence}")
        from .results.adaptive_report import summary_lines

        for line in summary_lines(sweep_dir):  # an adaptive sweep's verdicts, seeds, rounds and compute
            print(line)
    # plain print: paths must stay copyable, not wrapped to the terminal width
    for name, path in sorted(paths.items(), key=lambda kv: (kv[1].suffix != ".parquet", kv[1].suffix, str(kv[1]))):
        print(f"  {name.replace('plot_', 'plot: '):<24} {path}")
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        print(f"  {'MLflow UI':<24} maskdm-sweep ui {Path(sweep_dir)}")
    elif tracking_uri:
        print(f"  {'MLflow':<24} {tracking_uri}")


def results_json(sweep_dir: Path, paths: dict[str, Path]) -> dict:
    """What ``report`` prints, as data (``report --json``): FID by arm over seeds, the speed-ups with their
    sentences, an adaptive sweep's arms (``seeds_until_decided``), and the files written."""
    import json

    import pandas as pd

    from .layout import SweepDir
    from .results import comparison_table, headline, load

    out: dict = {
        "sweep": Path(sweep_dir).name,
        "arms": [],
        "speedup": [],
        "speedup_sentences": [],
        "files": {name: str(path) for name, path in paths.items()},
    }
    if SweepDir.of(sweep_dir).trials_parquet.exists():
        trials, curves = load(sweep_dir)
        # through pandas' JSON writer: NaN becomes null, numpy numbers plain numbers
        out["arms"] = json.loads(comparison_table(trials).to_json(orient="records"))
        table, sentences = headline(sweep_dir, trials, curves)
        out["speedup"] = json.loads(pd.DataFrame(table).to_json(orient="records"))
        out["speedup_sentences"] = sentences
    from .results.adaptive_report import rounds_json

    out["seeds_until_decided"] = rounds_json(sweep_dir)  # an adaptive sweep's arms; empty otherwise
    return out
