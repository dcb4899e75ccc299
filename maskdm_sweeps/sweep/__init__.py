"""Sweeps on Ray Tune: the trainable, phases with shared pre-trainings, schedulers, searchers, resume."""

from .events import read_events
from .runner import SweepOutcome, init_ray, run_sweep

__all__ = ["read_events", "SweepOutcome", "init_ray", "run_sweep"]
