"""Specs: YAML loading with line numbers, ``--set`` overrides, ``--smoke``, validation and expansion into a plan.

Exports are lazy (see ``maskdm_sweeps._lazy``): the results import :mod:`.identity` alone, to name the trials of a
sweep directory, without the spec's models.
"""

from .._lazy import lazy_exports

# public name -> the submodule that defines it, imported on first use
_EXPORTS = {
    "expand": ["PretrainPlan", "SweepPlan", "TrialPlan", "build_plan", "is_known_key", "load_spec"],
    "loading": ["Problem", "SpecError", "apply_overrides", "load_model", "read_yaml", "validate"],
    "schema": ["SweepSpec"],
    "smoke": ["smoke_spec"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
