"""Terminal output for long work: a rich progress bar fed by the trainer's Reporter protocol."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .trainer.reporter import NullReporter

console = Console(stderr=True)


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
            s for s in (f"loss {self.loss:.4f}" if self.loss is not None else "",
                        f"FID {self.fid:.2f}" if self.fid is not None else "") if s
        )
        self.progress.update(self.task, completed=step, status=status)

    def artifact(self, step: int, path: Path) -> None:
        self.progress.update(self.task, completed=step)
