"""The sweep directory's own records, written by the driver: the resolved spec and ``plan.json`` (the directory's
binding, see :mod:`~maskdm_sweeps.sweepspec.binding`), and ``invocations.json`` (one entry per ``run``/``resume``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..files import read_json, write_json
from ..layout import PLAN_FILE
from ..spec_hash import LOCATION_FIELD, SPEC_HASH_OF
from ..sweepspec.expand import SweepPlan


def save_resolved_spec(plan: SweepPlan) -> Path:
    """The spec as it ran (overrides and --smoke applied), without its location: what ``resume`` reloads where the
    directory is then; ``plan.json`` beside it records its hash (the sweep directory's binding, see
    :mod:`~maskdm_sweeps.sweepspec.binding`). ``sweep.budget`` stays in the file (``resume`` keeps to it), though
    not in the hash."""
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in plan.spec.model_dump(mode="json").items() if k != LOCATION_FIELD}
    path = plan.layout.resolved_spec
    path.write_text(
        f"# resolved spec of sweep {plan.spec.name} (hash {plan.spec_hash}, recorded in {PLAN_FILE})\n"
        f"# {LOCATION_FIELD}: the folder above this sweep directory, wherever it is\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    write_json(plan.layout.plan_file, plan_summary(plan))
    return path


def plan_summary(plan: SweepPlan) -> dict[str, Any]:
    """What ``plan.json`` holds: the spec's hash, the trials and the shared pre-trainings."""
    return {
        "sweep": plan.spec.name,
        "spec_hash": plan.spec_hash,
        "spec_hash_of": SPEC_HASH_OF,
        "trials": [
            {
                "trial_id": t.trial_id,
                "label": t.label,
                "assignments": t.assignments,
                "pretrain_key": t.pretrain_key,
                "pretrain_steps": t.config.pretrain.steps,
            }
            for t in plan.trials
        ],
        "pretrains": {
            k: {"trial_ids": p.trial_ids, "lengths": p.lengths, "reused": plan.pretrain_finished(k)}
            for k, p in plan.pretrains.items()
        },
    }


def invocations(plan: SweepPlan) -> list[dict]:
    """The earlier invocations of the sweep, oldest first: ``{number, resume, address, experiments}``."""
    return read_json(plan.layout.invocations) or []


def record_invocation(plan: SweepPlan, record: dict) -> None:
    """Add this invocation to ``invocations.json``."""
    write_json(plan.layout.invocations, invocations(plan) + [record])
