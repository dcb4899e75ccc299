"""The sweep spec: a ``base`` trial config plus the question's axes, search, scheduler, resources and tracking.

Every field carries a description: the README's field reference and ``spec.schema.json`` are generated from here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..layout import reserved_name
from ..trainer.config import TrialConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite numbers only


class Distribution(_Strict):
    """One continuous or discrete knob of a random or Optuna search."""

    type: Literal["uniform", "loguniform", "int", "choice"] = Field(..., description="Distribution family.")
    low: float | None = Field(None, description="Lower bound (uniform, loguniform, int).")
    high: float | None = Field(None, description="Upper bound (uniform, loguniform; inclusive for int).")
    values: list[Any] | None = Field(None, description="The options of a 'choice'.")

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' needs a non-empty values list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type!r} distribution needs low < high")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class SearchConfig(_Strict):
    """How trials are chosen: the full grid, random samples, or Optuna's TPE."""

    method: Literal["grid", "random", "optuna"] = Field(
        "grid",
        description="grid: every combination of the axes; random: num_samples draws from space (times the "
        "grid); optuna: num_samples trials proposed by a seeded TPE sampler (no grid axes).",
    )
    num_samples: int = Field(1, ge=1, description="Trials drawn by random or optuna search.")
    seed: int = Field(0, description="Seed of the random or TPE sampler.")
    metric: str = Field("eval/fid", description="Metric the search optimises (a reported metric name).")
    mode: Literal["min", "max"] = Field("min", description="Whether the metric is minimised or maximised.")
    space: dict[str, Distribution] = Field(
        {}, description="Dotted trial-config keys (e.g. finetune.lr) mapped to their distributions."
    )

    @model_validator(mode="after")
    def _space_matches_method(self) -> SearchConfig:
        if self.method == "grid" and self.space:
            raise ValueError("a search space needs method 'random' or 'optuna' (grid search uses sweep.axes)")
        if self.method != "grid" and not self.space:
            raise ValueError(f"method {self.method!r} needs a non-empty space")
        return self


class SchedulerConfig(_Strict):
    """Early stopping of the worse trials (ASHA), with the training step as its time."""

    type: Literal["none", "asha"] = Field("none", description="none, or ASHA (asynchronous successive halving).")
    metric: str = Field("eval/fid", description="Metric ASHA compares (eval/fid needs eval.every_steps > 0).")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    grace_period: int = Field(100, ge=1, description="Steps every trial runs before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="Keep 1/reduction_factor of the trials at each rung.")


class SeedRounds(_Strict):
    """Seeds added round by round only where a verdict is still open (see docs/method.md, "Seeds until decided")."""

    min: int = Field(2, ge=2, description="Seeds every arm and the baseline run in the first round (seeds 0..min-1).")
    max: int = Field(8, ge=2, description="The most seeds any arm or baseline gets (seeds 0..max-1).")
    until: Literal["decided"] = Field(
        "decided",
        description="decided: after each round, every arm whose speed-up verdict is still open gets one more seed "
        "(and its baseline one, when the baseline's spread is what keeps the verdict open), until every verdict is "
        "decided, hopeless to decide by max (futile), or at max. The interval keeps report.confidence over all the "
        "rounds' looks (alpha spending).",
    )

    futility: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Stop adding seeds to an arm when the chance of deciding its verdict by max seeds (conditional "
        "power at the current estimate) is below this; 0: never (seeds go on to max while open).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SeedRounds:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be at least min ({self.min})")
        return self


class BudgetConfig(_Strict):
    """The most compute a sweep may spend; changing it does not change the sweep's identity (raise it and resume)."""

    tflops: float | None = Field(
        None, gt=0, description="Training plus evaluation TFLOPs (exact counts from the configs), all trials."
    )
    device_hours: float | None = Field(
        None, gt=0, description="Estimated device-hours on the reference GPU (the plan's per-trial estimates)."
    )

    @model_validator(mode="after")
    def _one(self) -> BudgetConfig:
        if (self.tflops is None) == (self.device_hours is None):
            raise ValueError("give exactly one of tflops or device_hours")
        return self


class SweepConfig(_Strict):
    """The axes of the question: a grid over dotted keys, zipped lists, seeds and the no-pre-training baseline."""

    axes: dict[str, list[Any]] = Field(
        {},
        description="Grid axes: a dotted trial-config key (mask.rate, finetune.steps) or a whole section "
        "(mask) mapped to its values; every combination becomes a trial.",
    )
    zip: dict[str, list[Any]] = Field(
        {},
        description="Keys varied together (lists of equal length), e.g. pretrain.steps and finetune.steps "
        "pairs at a fixed total; together they form one more grid axis.",
    )
    seeds: list[int] | SeedRounds = Field(
        [0],
        description="Seeds: a list (each combination is run once per seed), or {min, max, until: decided}: seeds "
        "added round by round only to arms whose verdict against the baseline is still open.",
    )
    stop_behind: bool = Field(
        False,
        description="Stop an arm's trials at an evaluation once the arm is clearly behind the baseline at equal "
        "training compute (every seed worse than every baseline seed, and the means apart by more than twice the "
        "evaluation noise; at least 2 seeds). Stopped trials keep their checkpoints: a later run with a larger "
        "budget continues them. Needs seeds {min, max} and an equal_compute baseline.",
    )
    budget: BudgetConfig | None = Field(
        None,
        description="The most the sweep may spend: it never starts a seed that would take it past the budget, "
        "adds seeds to the most open verdicts first, and the report names the verdicts left open. Needs seeds "
        "{min, max}.",
    )
    baseline: bool | Literal["equal_steps", "equal_compute"] = Field(
        False,
        description="Add the DDPM baseline (no pre-training, pretrain.steps = 0) for every combination "
        "of the axes that do not concern pre-training. true or 'equal_steps': the baseline fine-tunes for "
        "finetune.steps, as the arms do; 'equal_compute': it trains for as many steps as give it the training "
        "FLOPs of the most expensive arm (pre-training and fine-tuning), so its FID-vs-compute curve spans the "
        "whole compute axis (`plan` shows the steps).",
    )
    search: SearchConfig = Field(default_factory=SearchConfig, description="Grid, random or Optuna search.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="Early stopping.")

    @field_validator("axes", "zip")
    @classmethod
    def _non_empty_lists(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int] | SeedRounds) -> list[int] | SeedRounds:
        if isinstance(seeds, list) and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError("seeds must be a non-empty list without repeats")
        return seeds

    @property
    def rounds(self) -> SeedRounds | None:
        """The seed rounds of an adaptive sweep, or None for a fixed list of seeds."""
        return self.seeds if isinstance(self.seeds, SeedRounds) else None

    @property
    def seed_values(self) -> list[int]:
        """Every seed a trial can have: the list, or 0..max-1 of seed rounds (the most the sweep can run)."""
        return list(range(self.seeds.max)) if isinstance(self.seeds, SeedRounds) else self.seeds

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError(f"zip lists must have equal lengths, got {sorted(lengths)}")
        keys = list(self.axes) + list(self.zip) + list(self.search.space) + (["seed"] if self.seeds != [0] else [])
        self._check_adaptive()
        for key in set(keys):
            clashes = [k for k in keys if k == key or k.startswith(key + ".") or key.startswith(k + ".")]
            if len(clashes) > 1:
                raise ValueError(f"duplicate axes: {sorted(set(clashes))} set the same field more than once")
        if self.search.method == "optuna" and (self.axes or self.zip or len(self.seed_values) > 1 or self.baseline):
            raise ValueError(
                "an optuna search cannot be mixed with grid axes (axes, zip, several seeds, baseline): run one "
                "spec per grid point, or use method 'random', which combines samples with the grid"
            )
        return self

    def _check_adaptive(self) -> None:
        if self.rounds is None:
            if self.stop_behind or self.budget is not None:
                raise ValueError("stop_behind and budget need seeds {min, max, until: decided}")
            return
        if not self.baseline:
            raise ValueError("seeds {min, max} decide each arm against the baseline: set baseline")
        if self.search.method != "grid" or self.scheduler.type != "none":
            raise ValueError("seeds {min, max} need a grid search and no scheduler (they stop arms by their own rule)")
        if self.stop_behind and self.baseline != "equal_compute":
            raise ValueError("stop_behind compares at equal compute: it needs baseline: equal_compute")


class ResourcesConfig(_Strict):
    """What each trial gets, and how many run at once."""

    workers: int = Field(
        1,
        ge=1,
        description="Data-parallel workers per trial (Ray Train, PyTorch DDP: NCCL on "
        "GPUs, gloo on CPUs). The batch sizes stay global (split evenly over the workers, so they "
        "must divide by it); gpus and cpus are per worker.",
    )
    gpus: float = Field(
        1.0,
        ge=0,
        description="GPUs per trial (per worker when workers > 1: whole GPUs); "
        "fractions pack several trials on one GPU.",
    )
    cpus: float = Field(1.0, gt=0, description="CPU cores per trial (per worker when workers > 1).")
    max_concurrent_trials: int = Field(
        0, ge=0, description="Upper bound on trials running at once (0: as many as the resources allow)."
    )
    max_failures: int = Field(
        1,
        ge=0,
        description="Retries of a trial whose process fails, each from its last "
        "checkpoint (with workers > 1: also restarts of the worker group after a worker dies).",
    )

    @model_validator(mode="after")
    def _whole_gpus_per_worker(self) -> ResourcesConfig:
        if self.workers > 1 and self.gpus != int(self.gpus):
            raise ValueError(
                f"gpus must be a whole number when workers > 1 (got {self.gpus}): NCCL cannot place "
                "two ranks of one trial on one GPU; pack single-worker trials instead"
            )
        return self

    @property
    def trial_gpus(self) -> float:
        """GPUs a trial holds, all workers together."""
        return self.workers * self.gpus

    @property
    def gpus_billed(self) -> float:
        """GPUs a trial is charged for (MLflow, parquet and ``plan`` alike): every GPU it holds, all workers together,
        a fractional (packed) share counted as a whole GPU; 0 for a CPU trial, which holds none."""
        return self.workers * max(1.0, self.gpus) if self.gpus > 0 else 0.0

    @property
    def device(self) -> str:
        """``gpu`` or ``cpu``: what a trial's compute is counted in."""
        return "gpu" if self.gpus > 0 else "cpu"

    @property
    def devices_billed(self) -> float:
        """Devices a trial is charged for: :attr:`gpus_billed` on GPUs; on a CPU, one per worker process."""
        return self.gpus_billed if self.gpus > 0 else float(self.workers)

    @property
    def trial_cpus(self) -> float:
        """CPUs a trial holds, all workers together."""
        return self.workers * self.cpus


class TrackingConfig(_Strict):
    """Where runs are recorded."""

    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default sqlite:///<output_dir>/mlflow.db "
        "(absolute). An http:// server works the same.",
    )
    experiment: str | None = Field(None, description="MLflow experiment name; default: the sweep name.")


class ReportConfig(_Strict):
    """How the report measures the speed-up of masked pre-training."""

    target_fid: float | list[float] | None = Field(
        None,
        description="FID(s) at which the speed-up is measured: the training compute an arm needs to first "
        "reach the target against the baseline's. Default: the baseline's final mean FID (the method's measure).",
    )
    confidence: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Coverage of the bootstrap interval of the speed-up "
        "(resampling the seeds of an arm and of the baseline).",
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Bootstrap resamples for that interval.")

    @field_validator("target_fid")
    @classmethod
    def _positive(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, list) and not value:
            raise ValueError("target_fid needs at least one value (or leave it out for the baseline's final FID)")
        if any(not v > 0 for v in values):
            raise ValueError("target FIDs must be > 0")
        return value

    @property
    def targets(self) -> list[float] | None:
        """The targets as a list, or None for the default (the baseline's final FID)."""
        if self.target_fid is None:
            return None
        return [float(v) for v in (self.target_fid if isinstance(self.target_fid, list) else [self.target_fid])]


class SweepSpec(_Strict):
    """A declarative ablation: ``base`` is one trial; ``sweep`` says what varies."""

    name: str = Field(..., description="Sweep name: results go to <output_dir>/<name>/ (letters, digits, _ and -).")
    description: str = Field("", description="The question the sweep asks, for the report.")
    output_dir: Path = Field(
        Path("results"),
        validate_default=True,
        description="Results root (the MLflow store "
        "and shared pre-trainings live here too), relative to where the command runs.",
    )
    base: TrialConfig = Field(..., description="The trial config every trial starts from.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="What varies.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Resources per trial.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")
    report: ReportConfig = Field(default_factory=ReportConfig, description="The report's speed-up measure.")

    @field_validator("output_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # relative to where the command runs, not to a trial process's working directory (Ray Tune moves those)
        path = path.expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            what = "is" if existing == path else f"would be created under {existing}, which is"
            raise ValueError(f"output_dir {str(path)!r} {what} a file, not a directory")
        return path

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"name {name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")
        taken = reserved_name(name)
        if taken:
            raise ValueError(f"name {name!r} is taken by the results root's own {taken}: choose another name")
        return name
