"""The binding of a sweep directory to its spec: the hash of a resolved spec's content, recorded in ``plan.json``
and checked whenever the directory is used again (``sweepspec.binding``; standard library only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .files import read_json
from .layout import PLAN_FILE, RESOLVED_SPEC, SweepDir, SweepDirError

LOCATION_FIELD = "output_dir"
"""Where a sweep directory is, not what it holds: a field of a resolved spec its hash leaves out."""
BUDGET_FIELD = ("sweep", "budget")
"""What a sweep may spend, not what it asks: left out of the hash too, so a budget can be raised and the sweep
resumed (arms stopped as behind then continue)."""
SPEC_HASH_OF = f"{RESOLVED_SPEC} without its {LOCATION_FIELD} and {'.'.join(BUDGET_FIELD)}"
"""What ``plan.json``'s ``spec_hash`` is the hash of (recorded beside it: directories written before lack it)."""


def spec_content(resolved: dict) -> dict:
    """A resolved spec (plain data) without its location and budget: what binds a sweep directory."""
    content = {k: v for k, v in resolved.items() if k != LOCATION_FIELD}
    section, field = BUDGET_FIELD
    if isinstance(content.get(section), dict):
        content[section] = {k: v for k, v in content[section].items() if k != field}
    return content


def spec_hash(resolved: dict) -> str:
    """The hash of a resolved spec's content (16 hex digits): equal for the same question wherever it lives."""
    canonical = json.dumps(spec_content(resolved), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def recorded_spec_hash(plan: Any) -> str | None:
    """The spec hash a ``plan.json`` records, or None when it records none by this rule (an older directory)."""
    if isinstance(plan, dict) and plan.get("spec_hash_of") == SPEC_HASH_OF:
        return plan.get("spec_hash")
    return None


class SpecEdited(SweepDirError):
    """``spec.resolved.yaml`` no longer has the hash ``plan.json`` recorded: it was edited after the sweep ran."""

    def __init__(self, path: Path, recorded: str, actual: str):
        self.path, self.recorded, self.actual = Path(path), recorded, actual
        super().__init__(
            f"{path} has hash {actual}, but {PLAN_FILE} beside it records {recorded}: the spec was "
            "edited after the sweep ran, and its trials would no longer match it. Restore it (each MLflow "
            "parent run of the sweep holds a copy), or run the edited spec under a new name"
        )


def verify_spec_hash(sweep: SweepDir, resolved: dict) -> None:
    """Raise :class:`SpecEdited` when ``resolved`` (the sweep's resolved spec) is not what its ``plan.json``
    recorded; an older directory that records no hash by this rule passes."""
    recorded, actual = recorded_spec_hash(read_json(sweep.plan_file)), spec_hash(resolved)
    if recorded is not None and recorded != actual:
        raise SpecEdited(sweep.resolved_spec, recorded, actual)
