"""Sweeps on Ray Tune: the trainable, phases with shared pre-trainings, schedulers, searchers, resume.

The names below load on first use (PEP 562), so that planning (``sweep.plan_view``, ``sweep.packing``) and reading
events never import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOME = {
    "read_events": "events",
    "SweepOutcome": "outcome",
    "init_ray": "ray_setup",
    "run_sweep": "runner",
    "ClusterTooSmall": "ray_setup",
    "SweepStorageError": "failures",
}

__all__ = list(_HOME)

if TYPE_CHECKING:
    from .events import read_events as read_events
    from .failures import SweepStorageError as SweepStorageError
    from .outcome import SweepOutcome as SweepOutcome
    from .ray_setup import ClusterTooSmall as ClusterTooSmall
    from .ray_setup import init_ray as init_ray
    from .runner import run_sweep as run_sweep


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
