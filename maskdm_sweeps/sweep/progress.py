"""A readable live table of a sweep's trials (instead of Ray's raw tables): stage, step, loss, FID, status."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from ray import tune


class LiveTable(tune.Callback):
    """``labels``: trial id -> label; ``stop_request``: the sweep's Ctrl-C marker (a trial that ends while it exists
    stopped at its checkpoint, and shows as ``stopped`` rather than ``done``)."""

    def __init__(self, title: str, labels: dict[str, str], console: Console | None = None,
                 stop_request: Path | None = None):
        self.title, self.labels, self.stop_request = title, labels, stop_request
        self.rows: dict[str, dict] = {}
        self.console = console
        self.live: Live | None = None

    def __getstate__(self):  # Tune pickles its run config (for resume); a live display does not travel
        return {**self.__dict__, "live": None, "console": None}

    def _table(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for col in ("trial", "arm", "stage", "step", "loss", "FID", "status"):
            table.add_column(col, justify="right" if col in ("step", "loss", "FID") else "left")
        for row in self.rows.values():
            table.add_row(row["trial"], self.labels.get(row["trial"], "shared pre-training"), row.get("stage", ""),
                          str(row.get("step", "")), _fmt(row.get("train/loss")), _fmt(row.get("eval/fid")),
                          row.get("status", ""))
        return table

    def _update(self, trial, **fields) -> None:
        unit = trial.config.get("trial_id") or trial.config.get("unit") or trial.config.get("pretrain_key", "")
        key, _, branch = unit.partition("/")  # a pre-training line: its key, and a branch's name after a slash
        name = unit if unit.startswith("t-") else f"pre-{key[:10]}" + (f"/{branch}" if branch else "")
        row = self.rows.setdefault(trial.trial_id, {"trial": name})
        row.update(fields)
        if self.live is not None:
            self.live.update(self._table())

    def setup(self, **info) -> None:
        self.live = Live(self._table(), console=self.console or Console(stderr=True), refresh_per_second=2)
        self.live.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._update(trial, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        keep = {k: result[k] for k in ("stage", "step", "train/loss", "eval/fid") if k in result}
        self._update(trial, **keep)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        stopped = self.stop_request is not None and self.stop_request.exists()
        self._update(trial, status="[yellow]stopped" if stopped else "done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._update(trial, status="[red]error")

    def on_experiment_end(self, trials, **info) -> None:
        if self.live is not None:
            self.live.stop()


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"
