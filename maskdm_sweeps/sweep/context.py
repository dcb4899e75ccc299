"""What every trial process of a sweep needs, shipped once through ``tune.with_parameters``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..sweepspec.expand import SweepPlan, TrialPlan, set_dotted
from ..trainer import Reporter
from ..trainer.config import TrialConfig


@dataclass
class SweepContext:
    """Everything a trial process needs, shipped once through ``tune.with_parameters``."""

    plan: SweepPlan
    extra_reporters: Callable[[TrialPlan, str, Path], list[Reporter]] | None = None  # rank 0's (MLflow)
    rank_reporters: Callable[[TrialPlan, str, Path, int], list[Reporter]] | None = None  # every rank's, first
    trials: dict[str, TrialPlan] = field(init=False)
    progress: Any = None  # the driver's SweepProgress (sweep/progress.py); never shipped to trials
    status_every: float = 60.0

    def __post_init__(self) -> None:
        self.trials = {t.trial_id: t for t in self.plan.trials}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "progress": None}

    def trial_for(self, params: dict[str, Any]) -> TrialPlan:
        """The trial of a Tune config: a planned trial id, plus sampled search values if any."""
        base = self.trials[params["trial_id"]]
        sampled = {k: v for k, v in params.items() if k != "trial_id"}
        if not sampled:
            return base
        data = base.config.model_dump(mode="json")
        for key, value in sampled.items():
            set_dotted(data, key, value)
        return TrialPlan.of(TrialConfig.model_validate(data), {**base.assignments, **sampled})
