"""Specs: YAML loading with line numbers, ``--set`` overrides, validation into the typed configs."""

from .loading import Problem, SpecError, apply_overrides, load_model, read_yaml, validate

__all__ = ["Problem", "SpecError", "apply_overrides", "load_model", "read_yaml", "validate"]
