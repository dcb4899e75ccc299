"""A sweep directory holds the answer to one question: it is bound to the resolved spec it ran.

``spec.resolved.yaml`` holds the spec as it ran, without its location (``output_dir`` is the folder above the
directory, wherever that is now), and ``plan.json`` records the hash of that content (:func:`layout.spec_hash`).
``run`` of a spec whose content differs from what a directory holds is refused before anything starts, naming the
changed fields (:func:`check_binding`); ``resume`` and ``report`` load a directory where it is, refusing a resolved
spec edited by hand (:func:`load_sweep_dir`); ``run --replace`` moves the old directory aside (:func:`move_aside`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..layout import RESOLVED_SPEC, SweepDir, SweepDirError
from ..spec_hash import spec_content, spec_hash, verify_spec_hash
from .expand import SweepPlan, plan_of
from .loading import SpecError, read_mapping, validate
from .schema import SweepSpec

ABSENT = object()  # a field one of two specs does not have
SHOWN_CHANGES = 20  # changed fields listed in full; the rest are counted


class SpecChanged(SweepDirError):
    """``run`` of a spec whose resolved content differs from the one its sweep directory holds."""

    def __init__(self, sweep_dir: Path, name: str, changes: list[tuple[str, Any, Any]], old: str, new: str):
        self.sweep_dir, self.changes = Path(sweep_dir), changes
        shown = [f"  {path}: {_shown(a)} -> {_shown(b)}" for path, a, b in changes[:SHOWN_CHANGES]]
        if len(changes) > SHOWN_CHANGES:
            shown.append(f"  ... and {len(changes) - SHOWN_CHANGES} more")
        super().__init__(
            f"{sweep_dir} holds sweep {name} run with another spec (hash {old}); this one (hash {new}) changes:\n"
            + "\n".join(shown)
            + "\n"
            f"Running it there would mix the trials of both specs in one report. Either\n"
            f"  - give it a new name, e.g. --set name={name}-2 (shared pre-trainings are reused), or another "
            "output_dir, or\n"
            f"  - run it with --replace: {sweep_dir} is moved aside to {name}.replaced-<UTC time>/ beside it, and "
            "this spec starts afresh there (nothing is deleted; shared pre-trainings are reused)"
        )


class NotASweepDir(SweepDirError):
    """A directory without a resolved spec, or one named otherwise than the sweep it holds."""


def _shown(value: Any) -> str:
    return "(absent)" if value is ABSENT else json.dumps(value)


def spec_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, old value, new value)`` of every field that differs between two resolved specs (plain data),
    in the old spec's order; lists compare whole, values as their JSON (``1`` is not ``1.0``, as in the hash)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [
            change
            for key in keys
            for change in spec_changes(old.get(key, ABSENT), new.get(key, ABSENT), f"{prefix}{key}.")
        ]
    same = (
        old is not ABSENT and new is not ABSENT and json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
    )
    return [] if same else [(prefix.rstrip("."), old, new)]


def read_bound_spec(sweep: SweepDir) -> dict:
    """The resolved spec a sweep directory holds (plain data), checked against the hash its ``plan.json`` records.

    Raises :class:`~maskdm_sweeps.layout.SpecEdited` when they differ, ``SweepDirError`` when it is unreadable.
    """
    try:
        data, _, _ = read_mapping(sweep.resolved_spec)
    except SpecError as err:
        raise SweepDirError(
            f"{sweep.resolved_spec} cannot be read, so what {sweep.path} holds is unknown:\n{err}\n"
            "Run under a new name, or with --replace to move the directory aside"
        ) from None
    verify_spec_hash(sweep, data)
    return data


def _resolved(sweep: SweepDir, data: dict) -> dict:
    """A held spec as this version resolves it (its defaults filled in, as a new spec's are), or as it is written
    when it no longer validates."""
    try:
        spec = validate(
            SweepSpec, {**data, "output_dir": str(sweep.root)}, {}, str(sweep.resolved_spec), check_paths=False
        )
    except SpecError:
        return data
    return spec.model_dump(mode="json")


def check_binding(plan: SweepPlan) -> None:
    """Raise :class:`SpecChanged` when ``plan``'s sweep directory holds another spec than ``plan``'s (re-running the
    same spec passes: it finds its finished trials), ``SpecEdited`` when the one it holds was edited. Reads only."""
    sweep = plan.layout
    if not sweep.resolved_spec.exists():
        return
    held = _resolved(sweep, read_bound_spec(sweep))
    if spec_hash(held) == plan.spec_hash:
        return
    new = plan.spec.model_dump(mode="json")
    raise SpecChanged(
        sweep.path, plan.spec.name, spec_changes(spec_content(held), spec_content(new)), spec_hash(held), plan.spec_hash
    )


def load_sweep_dir(sweep_dir: Path, check_paths: bool = True) -> SweepPlan:
    """The plan of the sweep in ``sweep_dir``, where that directory is now: its results root (``output_dir``) is the
    folder above it, wherever the directory was first run (a moved or copied sweep resumes in place).

    Raises :class:`NotASweepDir`, ``SpecEdited`` (the resolved spec no longer has its recorded hash), or
    :class:`SpecError` (it no longer validates).
    """
    sweep = SweepDir.of(sweep_dir)
    if not sweep.resolved_spec.exists():
        raise NotASweepDir(f"{sweep_dir} holds no {RESOLVED_SPEC}: not a sweep directory")
    data, lines, _ = read_mapping(sweep.resolved_spec)
    verify_spec_hash(sweep, data)
    if data.get("name") != sweep.name:
        raise NotASweepDir(
            f"{sweep_dir} holds sweep {data.get('name')!r}: a sweep directory keeps its sweep's name "
            f"(rename it back to {data.get('name')})"
        )
    located = {**data, "output_dir": str(sweep.root)}  # a location written by an older version is ignored
    return plan_of(located, lines, str(sweep.resolved_spec), check_paths=check_paths)


def move_aside(sweep: SweepDir, now: datetime | None = None) -> Path:
    """Rename a sweep directory to ``<name>.replaced-<UTC time>`` beside it; returns the new path. Its shared
    pre-trainings stay in the results root's ``_pretrain/``, where the next sweep finds them."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target, n = sweep.replaced(stamp), 1
    while target.exists():  # two replacements within a second
        target, n = sweep.replaced(f"{stamp}-{n}"), n + 1
    sweep.path.rename(target)
    return target
