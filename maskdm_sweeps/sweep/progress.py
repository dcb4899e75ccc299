"""Following a sweep while it runs: what the driver knows of its stage runs, an ETA, and two ways to show them.

:class:`SweepProgress` reads the sweep's ``events.jsonl`` (each stage run's start with the step it resumes from, its
end, its failure) and Ray Tune's results (step, loss, images/s), and estimates the time left: the compute still to do
(exact training and evaluation FLOPs of the plan, as ``plan`` counts them) over the rate measured since this
invocation began. Two Tune callbacks show it:

* :class:`LiveTable` on a terminal: a table of the stage runs (step of how many, loss, FID, status) under a title
  with the ETA;
* :class:`ProgressLog` when the output is a file or a pipe (``nohup``, Slurm, ``make run > run.log``): one plain line
  when a stage run starts, resumes (from which step) or ends (loss and FID), and a status line every
  ``every_seconds``: stage runs running, done and failed, images/s, ETA.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..layout import NOTICE_EVENT
from .notices import notice_line

STATUS_EVERY_SECONDS = 60.0


@dataclass
class StageRunState:
    """One stage run as the driver sees it."""

    stage: str
    key: str  # the trial id (fine-tuning) or the pre-training line's unit
    label: str
    from_step: int = 0
    to_step: int = 0
    step: int = 0
    loss: float | None = None
    fid: float | None = None
    images_per_second: float = 0.0
    status: str = "running"  # running, done, failed, stopped
    flops_per_step: float = 0.0  # training FLOPs (exact, from the config)
    eval_flops: float = 0.0  # FLOPs of all its evaluations (exact, from the config)


@dataclass
class SweepProgress:
    """The sweep's stage runs and the ETA. ``work_flops``: training + evaluation FLOPs this invocation has to do
    (``plan``'s totals); ``labels``: trial id -> short label; ``pretrain_labels``: key -> label; ``flops_per_step``:
    ``(stage, trial id) -> training FLOPs per step``."""

    events_path: Path
    work_flops: float
    labels: dict[str, str]
    pretrain_labels: dict[str, str]
    flops_per_step: dict[tuple[str, str], float]
    eval_flops: dict[tuple[str, str], float] = field(default_factory=dict)  # (stage, trial id) -> all evaluations
    started: float = field(default_factory=time.time)
    runs: dict[tuple[str, str], StageRunState] = field(default_factory=dict)
    offset: int = 0
    eval_flops_done: dict[tuple[str, str], float] = field(default_factory=dict)
    eval_flops_first: dict[tuple[str, str], float] = field(default_factory=dict)
    notices: list[dict] = field(default_factory=list)  # notice events not yet shown (see sweep/notices.py)

    def __post_init__(self) -> None:
        try:  # what earlier invocations logged is not news
            self.offset = Path(self.events_path).stat().st_size
        except OSError:
            self.offset = 0

    # ---------------------------------------------------------------------------------------------- inputs
    def poll(self) -> list[tuple[str, StageRunState, dict]]:
        """New events since the last poll, as ``(what, stage run, event)`` with what in start / resume / done /
        failed / stopped; events of earlier invocations are skipped."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        whole = chunk[: chunk.rfind(b"\n") + 1]  # a line being written stays for the next poll
        self.offset += len(whole)
        out = []
        for line in whole.decode(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not isinstance(e, dict):
                continue
            if e.get("event") == NOTICE_EVENT:
                self.notices.append(e)
                continue
            happened = self._apply(e)
            if happened:
                out.append(happened)
        return out

    def _apply(self, e: dict) -> tuple[str, StageRunState, dict] | None:
        kind, stage, key = e.get("event"), e.get("stage"), str(e.get("key", ""))
        if kind not in ("stage_start", "stage_done", "stage_error", "stage_interrupted") or not stage:
            return None
        ident = (stage, key)
        if kind == "stage_start":
            run = StageRunState(
                stage,
                key,
                self._label(stage, key),
                int(e.get("from_step", 0)),
                int(e.get("to_step", 0)),
                int(e.get("from_step", 0)),
                flops_per_step=self.flops_per_step.get((stage, str(e.get("trial_id"))), 0.0),
                eval_flops=self.eval_flops.get((stage, str(e.get("trial_id"))), 0.0),
            )
            self.runs[ident] = run
            if stage == "finetune":  # the plan counted the whole fine-tuning; its steps before from_step are done
                self.work_flops -= run.from_step * run.flops_per_step
            return ("resume" if run.from_step else "start", run, e)
        run = self.runs.setdefault(ident, StageRunState(stage, key, self._label(stage, key)))
        if kind == "stage_done":
            run.status, run.step, run.fid = "done", int(e.get("steps", run.step)), e.get("fid")
            return ("done", run, e)
        if kind == "stage_error":
            run.status = "failed"
            return ("failed", run, e)
        run.status, run.step = "stopped", int(e.get("step", run.step))
        return ("stopped", run, e)

    def on_result(self, result: dict) -> None:
        """A Tune result of a stage run: its step, loss, FID, images/s and evaluation compute so far."""
        stage, key = result.get("stage"), result.get("maskdm_key")
        run = self.runs.get((stage, str(key))) if stage and key else None
        if run is None:
            return
        run.step = int(result.get("step", run.step))
        if not run.flops_per_step and result.get("cost/train_tflops") and run.step:
            # a trial the plan did not list (a search's sample): its running total gives its FLOPs per step
            run.flops_per_step = result["cost/train_tflops"] * 1e12 / run.step
        run.loss = result.get("train/loss", run.loss)
        run.fid = result.get("eval/fid", run.fid)
        run.images_per_second = result.get("train/images_per_second", run.images_per_second)
        if "cost/eval_tflops" in result:
            self.eval_flops_first.setdefault((str(stage), str(key)), result["cost/eval_tflops"] * 1e12)
            self.eval_flops_done[(str(stage), str(key))] = result["cost/eval_tflops"] * 1e12

    def take_notices(self) -> list[str]:
        """The notices that arrived since the last call, as lines naming their stage run."""
        lines = [notice_line(e, self.unit_label(str(e.get("unit", "")))) for e in self.notices]
        self.notices.clear()
        return lines

    def unit_label(self, unit: str) -> str:
        """A unit of work (a trial id, or a pre-training line's unit) in words."""
        return self._label("finetune", unit) if unit in self.labels else self._label("pretrain", unit)

    def _label(self, stage: str, key: str) -> str:
        if stage == "finetune":
            return self.labels.get(key, key)
        base, _, branch = key.partition("/")
        label = self.pretrain_labels.get(base, f"pretrain {base[:10]}")
        return f"{label} · branch {branch}" if branch else label

    # ---------------------------------------------------------------------------------------------- the estimate
    def flops_done(self) -> float:
        """Compute done by this invocation: each stage run's steps since it (re)started x its FLOPs per step, plus
        the evaluations it reported."""
        train = sum((r.step - r.from_step) * r.flops_per_step for r in self.runs.values())
        evaluation = sum(
            r.eval_flops if r.status == "done" else self.eval_flops_done.get(k, 0.0) - self.eval_flops_first.get(k, 0.0)
            for k, r in self.runs.items()
        )
        return train + evaluation

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left: the compute left over the rate measured so far (None before any measurement)."""
        done = self.flops_done()
        elapsed = (now or time.time()) - self.started
        if done <= 0 or elapsed <= 0:
            return None
        return max(0.0, self.work_flops - done) / (done / elapsed)

    def counts(self) -> dict[str, int]:
        out = {"running": 0, "done": 0, "failed": 0, "stopped": 0}
        for r in self.runs.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def images_per_second(self) -> float:
        return sum(r.images_per_second for r in self.runs.values() if r.status == "running")

    def status_line(self, now: float | None = None) -> str:
        c = self.counts()
        eta = self.eta_seconds(now)
        done = self.flops_done()
        left = "ETA measuring" if eta is None else f"ETA {format_seconds(eta)}"
        return (
            f"status {time.strftime('%H:%M:%S', time.localtime(now or time.time()))} · {c['running']} running, "
            f"{c['done']} done, {c['failed']} failed · {self.images_per_second():,.0f} img/s · {left} "
            f"({done / 1e12:.3g} of {self.work_flops / 1e12:.3g} TFLOPs done, "
            f"{format_seconds((now or time.time()) - self.started)} elapsed)"
        )


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def event_line(what: str, run: StageRunState, event: dict) -> str:
    """One plain line for a stage run's start, resume, end, failure or stop."""
    name = run.label if run.stage == "pretrain" else f"{run.stage} {run.label}"  # a pre-training's says so
    if what == "start":
        return f"start   {name} ({run.to_step:,} steps)"
    if what == "resume":
        return f"resume  {name} from step {run.from_step:,} of {run.to_step:,}"
    if what == "done":
        loss = "" if run.loss is None else f" loss {run.loss:.4f}"
        fid = "" if run.fid is None else f" FID {run.fid:.2f}"
        return f"done    {name} at step {run.step:,}{loss}{fid}"
    if what == "failed":
        return f"failed  {name}: {str(event.get('error', ''))[:200]}"
    return f"stopped {name} at step {run.step:,} (its checkpoint; resume continues it)"


class _Follows(tune.Callback):
    """A Tune callback that shows a :class:`SweepProgress`: every result feeds it, and every step of Tune's loop, each
    result and the end refresh what is shown (:meth:`update`)."""

    progress: SweepProgress

    def update(self) -> None:
        raise NotImplementedError

    def on_step_end(self, iteration, trials, **info) -> None:
        self.update()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.progress.on_result(result)
        self.update()

    def on_experiment_end(self, trials, **info) -> None:
        self.update()


class ProgressLog(_Follows):
    """Plain progress lines for a log file: stage runs' starts, resumes and ends as they happen, and a status line
    with the ETA every ``every_seconds``."""

    def __init__(self, progress: SweepProgress, every_seconds: float = STATUS_EVERY_SECONDS, stream=None):
        self.progress, self.every = progress, every_seconds
        self.stream = stream
        self.last_status = time.time()

    def __getstate__(self):
        return {**self.__dict__, "stream": None}

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def update(self) -> None:
        for happened in self.progress.poll():
            self._print(event_line(*happened))
        for line in self.progress.take_notices():
            self._print(line)
        now = time.time()
        if now - self.last_status >= self.every:
            self.last_status = now
            self._print(self.progress.status_line(now))


class LiveTable(_Follows):
    """On a terminal: the stage runs as a live table (step of how many, loss, FID, status) under a title with the
    ETA. ``stop_request``: the sweep's Ctrl-C marker (a stage that ends while it exists shows as ``stopped``)."""

    def __init__(
        self, title: str, progress: SweepProgress, console: Console | None = None, stop_request: Path | None = None
    ):
        self.title, self.progress, self.stop_request = title, progress, stop_request
        self.console = console
        self.live: Live | None = None

    def __getstate__(self):  # Tune pickles its run config (for resume); a live display does not travel
        return {**self.__dict__, "live": None, "console": None}

    def _table(self) -> Table:
        eta = self.progress.eta_seconds()
        title = f"{self.title} · ETA {format_seconds(eta) if eta is not None else 'measuring'}"
        table = Table(title=title, title_justify="left")
        for col in ("stage run", "stage", "progress", "loss", "FID", "status"):
            table.add_column(col, justify="right" if col in ("progress", "loss", "FID") else "left")
        for run in self.progress.runs.values():
            share = f" {run.step / run.to_step:4.0%}" if run.to_step else ""
            status = {"done": "done", "failed": "[red]failed", "stopped": "[yellow]stopped"}.get(run.status, "running")
            table.add_row(
                run.label, run.stage, f"{run.step:,}/{run.to_step:,}{share}", _fmt(run.loss), _fmt(run.fid), status
            )
        return table

    def update(self) -> None:
        self.progress.poll()
        if self.live is not None:
            for line in self.progress.take_notices():  # above the table, where they stay readable
                self.live.console.print(line, markup=False, highlight=False)
            self.live.update(self._table())

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self.live = Live(self._table(), console=self.console or Console(stderr=True), refresh_per_second=2)
        self.live.start()

    def on_experiment_end(self, trials, **info) -> None:
        super().on_experiment_end(trials, **info)
        if self.live is not None:
            self.live.stop()


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}"


# ------------------------------------------------------------------------------------------------ the driver's side
def sweep_progress(plan) -> SweepProgress:
    """What the progress display starts from: the compute left (``plan``'s totals), labels, FLOPs per step."""
    from ..trainer.compute import stage_flops, train_flops_per_step
    from .plan_cost import totals

    tot = totals(plan)
    flops, evaluation = {}, {}
    for t in plan.trials:
        for stage in t.config.stages():
            flops[(stage, t.trial_id)] = float(train_flops_per_step(t.config, stage))
            evaluation[(stage, t.trial_id)] = float(stage_flops(t.config, stage, getattr(t.config, stage).steps)[1])
    work = float(tot.train_flops + tot.eval_flops)
    search = plan.spec.sweep.search
    if search.method != "grid":  # each planned trial is sampled num_samples times
        pre = tot.pretrain_to_train
        pretraining = float(pre.train_flops + pre.eval_flops) if pre else 0.0
        work = pretraining + (work - pretraining) * search.num_samples
    return SweepProgress(
        plan.layout.events,
        work,
        plan.short_labels(),
        {key: plan.pretrain_label(key) for key in plan.pretrains},
        flops,
        evaluation,
    )


def progress_callbacks(ctx, title: str) -> list:
    """Plain lines when standard output is not a terminal (a log file, a pipe); the live table where standard
    error is one. Both, for ``run > log`` typed at a terminal."""
    callbacks: list[tune.Callback] = []
    if ctx.progress is None:
        return callbacks
    # the log first: its poll takes the new events and prints them; the table, polling after it, reads the state
    # they left (Tune calls the callbacks in list order)
    if not sys.stdout.isatty():
        callbacks.append(ProgressLog(ctx.progress, ctx.status_every))
    if sys.stderr.isatty():
        callbacks.append(LiveTable(title, ctx.progress, stop_request=ctx.plan.layout.stop_request))
    return callbacks
