"""Specs: YAML loading with line numbers, ``--set`` overrides, ``--smoke``, validation and expansion into a plan."""

from .expand import PretrainPlan, SweepPlan, TrialPlan, build_plan, is_known_key, load_spec
from .loading import Problem, SpecError, apply_overrides, load_model, read_yaml, validate
from .schema import SweepSpec
from .smoke import smoke_spec

__all__ = [
    "PretrainPlan", "SweepPlan", "TrialPlan", "build_plan", "is_known_key", "Problem", "SpecError", "apply_overrides",
    "load_model", "load_spec", "read_yaml", "validate", "SweepSpec", "smoke_spec",
]
