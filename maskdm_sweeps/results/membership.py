"""Which trial directories a sweep's results hold: those of its plan, under the spec that plan was made from.

A sweep directory is bound to one resolved spec (``plan.json`` records its hash, see :mod:`maskdm_sweeps.layout`).
Results check that binding before reading anything, and leave out the trial directories the plan does not hold
(another spec's, in a directory written before sweeps were bound), so that no arm averages two questions.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..files import read_json
from ..layout import SweepDir
from ..spec_hash import verify_spec_hash


def read_spec(sweep_dir: Path) -> dict:
    """The sweep's resolved spec as plain data ({} when missing or unreadable)."""
    try:
        return yaml.safe_load(SweepDir.of(sweep_dir).resolved_spec.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def checked_plan(layout: SweepDir, spec: dict) -> dict:
    """The sweep's ``plan.json`` ({} when missing), once it is known to be the plan of the resolved spec ``spec``:
    raises :class:`~maskdm_sweeps.layout.SpecEdited` when they disagree (a report of trials planned by one spec
    under another's settings would be silently wrong)."""
    if spec:
        verify_spec_hash(layout, spec)
    plan = read_json(layout.plan_file)
    return plan if isinstance(plan, dict) else {}


def _is_grid(spec: dict) -> bool:
    search = (spec.get("sweep") or {}).get("search") or {}
    return search.get("method", "grid") == "grid"


def in_plan(manifest: dict, plan: dict, grid: bool) -> bool:
    """Whether a trial (its manifest) belongs to the plan: a grid plan lists every trial id (an id is the hash of
    all the trial computes); a searched trial, sampled and so listed nowhere, carries the hash of the spec that
    started it. Without a plan, and for manifests written before they carried a hash, every trial does."""
    listed = {t.get("trial_id") for t in plan.get("trials") or []}
    if grid and listed:
        return manifest.get("trial_id") in listed
    return not (manifest.get("spec_hash") and plan.get("spec_hash")) or manifest["spec_hash"] == plan["spec_hash"]


def trials_outside_plan(sweep_dir: Path) -> list[str]:
    """The trial directories of a sweep that its plan does not hold (left there by another spec): results leave
    them out, and the report names them."""
    layout = SweepDir.of(sweep_dir)
    spec, plan = read_spec(layout.path), read_json(layout.plan_file)
    plan = plan if isinstance(plan, dict) else {}
    manifests = {tid: read_json(layout.manifest(tid)) for tid in layout.trial_ids()}
    return sorted(tid for tid, m in manifests.items() if isinstance(m, dict) and not in_plan(m, plan, _is_grid(spec)))
