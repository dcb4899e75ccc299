"""What one ``run``/``resume`` invocation of a sweep ends with: the trials finished, reused, failed, stopped and
interrupted, its notices, and the results written from the sweep directory (parquet, report, plots, speed-ups)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..layout import NOTICE_EVENT
from ..sweepspec.expand import SweepPlan
from .events import read_events
from .progress import sweep_progress


@dataclass
class SweepOutcome:
    sweep_dir: Path
    finished: list[str] = field(default_factory=list)  # trial ids finished by now (this or an earlier run)
    reused: list[str] = field(default_factory=list)  # trial ids that were already finished before this run
    failed: dict[str, str] = field(default_factory=dict)  # trial id -> reason
    stopped: list[str] = field(default_factory=list)  # trial ids an early-stopping scheduler ended
    artifacts: dict[str, Path] = field(default_factory=dict)  # name -> parquet files, report and plots written after
    interrupted: list[dict] = field(default_factory=list)  # Ctrl-C: the stage runs stopped ({stage, key, step})
    killed: bool = False  # Ctrl-C (once or twice): the sweep stopped before its end
    notices: list[str] = field(default_factory=list)  # what the trial processes noticed in this invocation (lines)

    @property
    def exit_code(self) -> int:
        return 130 if self.killed else 1 if self.failed else 0

    @property
    def status(self) -> str:
        """The MLflow status of the invocation's parent run."""
        return "KILLED" if self.killed else "FAILED" if self.failed else "FINISHED"


def settle(plan: SweepPlan, outcome: SweepOutcome, invocation: int) -> None:
    """Fill in what the invocation ``invocation`` ended with, read from the sweep directory once its phases ended:
    the finished and stopped trials, the stage runs a Ctrl-C interrupted, the notices, and the results files."""
    sweep_dir = plan.sweep_dir
    started = {
        e["trial_id"] for e in read_events(sweep_dir) if e["event"] == "stage_start" and e["stage"] == "finetune"
    }
    if plan.spec.sweep.search.method == "grid":  # a grid's trials are its plan's (an older directory may hold others)
        started &= {t.trial_id for t in plan.trials}
    outcome.finished = sorted(t for t in started | {t.trial_id for t in plan.trials} if plan.trial_finished(t))
    outcome.stopped = sorted(t for t in started if not plan.trial_finished(t) and t not in outcome.failed)
    outcome.interrupted = [
        e for e in read_events(sweep_dir, since_invocation=invocation) if e["event"] == "stage_interrupted"
    ]
    outcome.notices = _notices_since(plan, invocation)
    outcome.artifacts = _write_results(plan)


def _notices_since(plan: SweepPlan, invocation: int) -> list[str]:
    """This invocation's notices (each once), as lines naming their stage run."""
    progress = sweep_progress(plan)
    seen: set[tuple] = set()
    for e in read_events(plan.sweep_dir, since_invocation=invocation):
        if e.get("event") == NOTICE_EVENT and (e.get("unit"), e.get("message")) not in seen:
            seen.add((e.get("unit"), e.get("message")))
            progress.notices.append(e)
    return progress.take_notices()


def _write_results(plan: SweepPlan) -> dict[str, Path]:
    """parquet, report and plots of the sweep (the results package): name -> path."""
    from ..results import write_all

    return write_all(plan.sweep_dir)


def headline_metrics(plan: SweepPlan) -> dict[str, float]:
    """The speed-ups of the sweep's report, for its MLflow parent run, and an adaptive sweep's seeds per arm and
    compute against the fixed design (``rounds/<arm>/seeds``, ``rounds/<arm>/baseline_seeds``,
    ``rounds/compute_vs_fixed``)."""
    from ..results import headline, load
    from ..results import headline_metrics as speedups
    from ..results.adaptive_report import rounds_answer

    trials, curves = load(plan.sweep_dir)
    return {**speedups(headline(plan.sweep_dir, trials, curves)[0]), **rounds_answer(plan.sweep_dir)[0]}


def headline_tags(plan: SweepPlan) -> dict[str, str]:
    """Tags of the sweep's MLflow parent run: an adaptive sweep's verdict per arm (``verdict/<arm>``, e.g.
    ``faster``, ``slower (stopped at 0.5 TFLOPs)``); none for a fixed list of seeds."""
    from ..results.adaptive_report import rounds_answer

    return rounds_answer(plan.sweep_dir)[1]
