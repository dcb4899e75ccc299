"""Spec -> plan: every trial's resolved config, and the stage graph with shared pre-trainings.

A trial is identified by the hash of every setting that affects what it computes (``t-<hash>``), so re-running a
spec finds its finished trials, and a pre-training is identified by the hash of what affects pre-training only, so
trials (and later sweeps) with equal pre-training settings share one run.
"""

from __future__ import annotations

import copy
import itertools
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..layout import SweepDir
from ..lines import keeping_line
from ..naming import distinct, short_label
from ..spec_hash import spec_hash
from ..trainer.compute import train_flops_per_step
from ..trainer.config import TrialConfig
from .identity import (
    BASELINE_IGNORED_SECTIONS,
    affects_pretraining,
    arm_of,
    mask_columns,
    mask_section,
    pretrain_key,
    pretrain_length_shared,
    trial_id,
    trial_label,
)
from .loading import Problem, SpecError, problems_from_validation, read_mapping, validate
from .schema import SweepSpec
from .smoke import smoke_spec


@dataclass(frozen=True)
class TrialPlan:
    trial_id: str  # "t-" + hash of every setting that affects the trial (see ``identity``)
    label: str  # the axis values that make this trial, e.g. "mask.rate=0.9 seed=1" (``identity.trial_label``)
    assignments: dict[str, Any]  # axis key -> value
    config: TrialConfig
    pretrain_key: str | None  # None for the baseline

    @classmethod
    def of(cls, config: TrialConfig, assignments: dict[str, Any]) -> TrialPlan:
        """The trial of a resolved config: its id and pre-training key from the config's stage hashes."""
        return cls(trial_id(config), trial_label(assignments), assignments, config, pretrain_key(config))

    @property
    def is_baseline(self) -> bool:
        return self.pretrain_key is None

    @property
    def arm(self) -> str:
        """The arm of this trial, from its mask: ``baseline``, ``patch r=0.5``, ... (``identity.arm_of``)."""
        return arm_of(mask_section(self.config))

    @property
    def short_label(self) -> str:
        """The trial in a few words for tables, logs and run names: ``patch r=0.5 · ema · s0`` (see ``naming``)."""
        return short_label(self.assignments, mask_section(self.config), self.config.seed)

    def manifest(self, resources, spec_hash: str = "") -> dict[str, Any]:
        """What results need to know of this trial, written once to ``trials/<id>/trial.json`` when it starts:
        its identity and names (label, short label, arm, the mask columns of ``trials.parquet``), the spec it
        belongs to (``spec_hash``: a searched trial is in no plan), its pre-training, the devices it holds
        (``resources``: the spec's), and its resolved config."""
        mask = mask_section(self.config)
        return {
            "trial_id": self.trial_id,
            "label": self.label,
            "short_label": self.short_label,
            "arm": arm_of(mask),
            "mask_columns": mask_columns(mask),
            "assignments": self.assignments,
            "spec_hash": spec_hash,
            "pretrain_key": self.pretrain_key,
            "effective_mask_rate": self.config.effective_mask_rate,
            "resources": {
                "device": resources.device,
                "workers": resources.workers,
                "gpus_billed": resources.gpus_billed,
                "devices_billed": resources.devices_billed,
            },
            "config": self.config.model_dump(mode="json"),
        }


@dataclass
class PretrainPlan:
    """One pre-training run: the trials it feeds, each from the length (a milestone) it asks for."""

    key: str
    config: TrialConfig  # the first trial's config; every sharing trial has the same pre-training settings
    trial_ids: list[str] = field(default_factory=list)
    lengths: dict[str, int] = field(default_factory=dict)  # trial id -> pre-training steps it asks for

    @property
    def asked(self) -> list[int]:
        """The lengths asked for, ascending, each once."""
        return sorted(set(self.lengths.values()))


@dataclass
class SweepPlan:
    spec: SweepSpec
    trials: list[TrialPlan]
    pretrains: dict[str, PretrainPlan]
    spec_hash: str

    @property
    def layout(self) -> SweepDir:
        return SweepDir(self.spec.output_dir.resolve(), self.spec.name)

    @property
    def sweep_dir(self) -> Path:
        return self.layout.path

    @property
    def store_dir(self) -> Path:
        """Shared across sweeps of one results root: finished pre-trainings are found here and reused."""
        return self.layout.store

    def trial_dir(self, trial_id: str) -> Path:
        return self.layout.trial_dir(trial_id)

    def short_labels(self) -> dict[str, str]:
        """trial id -> its short label, made distinct where two trials would share one."""
        return distinct({t.trial_id: t.short_label for t in self.trials})

    def pretrain_label(self, key: str) -> str:
        """A pre-training run in a few words: ``pretrain patch r=0.9 · s0`` plus the other swept settings that shape
        it (its length aside when the run serves several)."""
        pre = self.pretrains[key]
        first = next(t for t in self.trials if t.trial_id == pre.trial_ids[0])
        shaping = {
            k: v
            for k, v in first.assignments.items()
            if affects_pretraining(k) and not (k == "pretrain.steps" and pretrain_length_shared(pre.config))
        }
        return "pretrain " + short_label(shaping, pre.config.mask.model_dump(), pre.config.seed)

    def pretrain_finished(self, key: str) -> bool:
        """Whether every length the plan asks of pre-training ``key`` is kept on disk (by any of its lines)."""
        return all(self.milestone(key, n) is not None for n in self.pretrains[key].asked)

    def milestone(self, key: str, steps: int) -> Path | None:
        """The kept state of pre-training ``key`` at ``steps``, or None when no line keeps that length (yet)."""
        line = keeping_line(self.layout, key, steps)
        return None if line is None else line.milestone(steps)

    def trial_finished(self, trial_id: str) -> bool:
        return self.layout.finetune(trial_id).finished()

    def subset(self, trial_ids: Iterable[str]) -> SweepPlan:
        """The same sweep with only ``trial_ids`` (in plan order) and the pre-trainings they need: one round of
        seeds of an adaptive sweep."""
        keep = set(trial_ids)
        trials = [t for t in self.trials if t.trial_id in keep]
        return SweepPlan(self.spec, trials, pretrains_of(trials), self.spec_hash)


def pretrains_of(trials: Sequence[TrialPlan]) -> dict[str, PretrainPlan]:
    """The pre-training runs ``trials`` need, each with the trials it feeds and the lengths they ask for."""
    pretrains: dict[str, PretrainPlan] = {}
    for trial in trials:
        if trial.pretrain_key:
            pre = pretrains.setdefault(trial.pretrain_key, PretrainPlan(trial.pretrain_key, trial.config))
            pre.trial_ids.append(trial.trial_id)
            pre.lengths[trial.trial_id] = trial.config.pretrain.steps
    return pretrains


# ----------------------------------------------------------------------------------------------------- keys
def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def is_known_key(key: str, model: type[BaseModel] = TrialConfig) -> bool:
    """Whether a dotted key names a field of the trial config (``mask.rate``, ``finetune.lr``, ``mask``)."""
    models = [model]
    for part in key.split("."):
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            return False
        models = [m for f in fields for m in _models_in(f.annotation)]
    return True


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


# ----------------------------------------------------------------------------------------------------- expansion
def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid axes, zipped lists and seeds (in that order), plus baseline arms."""
    s = spec.sweep
    dims: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in s.axes.items()]
    if s.zip:
        n = len(next(iter(s.zip.values())))
        dims.append([{key: values[i] for key, values in s.zip.items()} for i in range(n)])
    dims.append([{"seed": seed} for seed in s.seed_values])
    points = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*dims)]
    if s.baseline:
        baselines = []
        for p in points:
            kept = {k: v for k, v in p.items() if k.split(".")[0] not in BASELINE_IGNORED_SECTIONS}
            baselines.append({"baseline": True, **kept})
        points += baselines
    return points


def _check_keys(spec: SweepSpec, lines: dict, source: str) -> None:
    problems = []
    for section in ("axes", "zip"):
        for key in getattr(spec.sweep, section):
            if not is_known_key(key):
                path: tuple[str, ...] = ("sweep", section, key)
                problems.append(
                    Problem(".".join(path), "unknown trial-config field (check the spelling)", lines.get(path), source)
                )
    for key in spec.sweep.search.space:
        if not is_known_key(key):
            path = ("sweep", "search", "space", key)
            problems.append(Problem(".".join(path), "unknown trial-config field", lines.get(path), source))
    if problems:
        raise SpecError(problems)


def _axis_line(key: str, spec: SweepSpec, lines: dict) -> tuple[tuple, int | None]:
    for section in ("axes", "zip"):
        if key in getattr(spec.sweep, section):
            path: tuple[str, ...] = ("sweep", section, key)
            return path, lines.get(path)
    path = ("sweep", "seeds") if key == "seed" else ("sweep", "baseline")
    return path, lines.get(path)


def _culprit(problem: Problem, assignments: dict[str, Any]) -> str:
    """The axis key most likely responsible for a validation problem of an expanded trial."""
    path = problem.path or problem.message.split(":")[0]  # model-level errors start with the section name
    related = [k for k in assignments if path == k or path.startswith(k + ".") or k.startswith(path + ".")]
    return related[0] if related else next(iter(assignments), "seed")


def resolve_trial(
    spec: SweepSpec,
    point: dict[str, Any],
    lines: dict,
    source: str,
    check_paths: bool = True,
    baseline_finetune_steps: int | None = None,
) -> TrialPlan:
    """One grid point -> a validated trial; errors point at the axis that produced the bad value.

    ``baseline_finetune_steps``: the fine-tuning length of a baseline point (an equal-compute baseline's).
    """
    data = spec.base.model_dump(mode="json")
    assignments = {k: v for k, v in point.items() if k != "baseline"}
    for key, value in assignments.items():
        set_dotted(data, key, value)
    if point.get("baseline"):
        set_dotted(data, "pretrain.steps", 0)
        if baseline_finetune_steps is not None:
            set_dotted(data, "finetune.steps", baseline_finetune_steps)
    try:
        config = TrialConfig.model_validate(data, context={"check_paths": check_paths})
    except ValidationError as err:
        problems = []
        for p in problems_from_validation(err, data, {}, source):
            axis_path, line = _axis_line(_culprit(p, assignments), spec, lines)
            value = assignments.get(axis_path[-1]) if axis_path[1] in ("axes", "zip") else point.get("seed")
            problems.append(
                Problem(
                    ".".join(axis_path),
                    f"value {value!r} gives an invalid trial: {p.path or 'config'}: {p.message}",
                    line,
                    source,
                )
            )
        raise SpecError(problems) from None
    if point.get("baseline"):
        assignments = {"baseline": True, **assignments}
    return TrialPlan.of(config, assignments)


def _shares_baseline_settings(trial: TrialPlan, point: dict[str, Any]) -> bool:
    """Whether a trial is one of the arms a baseline point stands beside: equal in every axis the baseline keeps
    (the seed aside: every seed's baseline gets the same length)."""
    kept = {k: v for k, v in point.items() if k not in ("baseline", "seed")}
    return all(trial.assignments.get(k) == v for k, v in kept.items())


def equal_compute_steps(spec: SweepSpec, point: dict[str, Any], arms: list[TrialPlan]) -> int | None:
    """Fine-tuning steps that give a baseline point the training FLOPs of its most expensive arm (its whole
    pre-training plus its fine-tuning), rounded up; None (keep ``finetune.steps``) when it has no masked arm."""

    def cost(config: TrialConfig) -> int:
        return sum(getattr(config, stage).steps * train_flops_per_step(config, stage) for stage in config.stages())

    budgets = [cost(t.config) for t in arms if not t.is_baseline and _shares_baseline_settings(t, point)]
    if not budgets:
        return None
    probe = resolve_trial(spec, point, {}, "", check_paths=False)
    per_step = train_flops_per_step(probe.config, "finetune")
    return max(probe.config.finetune.steps, -(-max(budgets) // per_step))


def _check_batches_split(spec: SweepSpec, trials: list[TrialPlan], lines: dict, source: str) -> None:
    """Each stage's batch is global: with several workers it must split evenly (else no trial could start)."""
    workers = spec.resources.workers
    problems: dict[str, Problem] = {}
    for trial in trials:
        for stage in trial.config.stages():
            batch = getattr(trial.config, stage).batch_size
            if batch % workers == 0:
                continue
            key = f"{stage}.batch_size"
            if key in trial.assignments:
                path, line = _axis_line(key, spec, lines)
            else:
                path = ("base", stage, "batch_size")
                line = lines.get(path) or lines.get(("resources", "workers"))
            problems.setdefault(
                ".".join(path),
                Problem(
                    ".".join(path),
                    f"{key} {batch} does not split evenly over resources.workers = {workers}: the batch "
                    f"is the global batch of all workers; use a multiple of {workers}",
                    line,
                    source,
                ),
            )
    if problems:
        raise SpecError(list(problems.values()))


def build_plan(
    spec: SweepSpec, lines: dict | None = None, source: str = "", spec_hash: str = "", check_paths: bool = True
) -> SweepPlan:
    """Expand a validated spec into trials and shared pre-trainings; raises :class:`SpecError` on bad axes."""
    lines = lines or {}
    _check_keys(spec, lines, source)
    trials: dict[str, TrialPlan] = {}
    points = grid_points(spec)
    equal_compute = spec.sweep.baseline == "equal_compute"
    for point in points:
        if equal_compute and point.get("baseline"):
            continue  # sized by the arms below
        trial = resolve_trial(spec, point, lines, source, check_paths)
        trials.setdefault(trial.trial_id, trial)  # e.g. baselines that several mask settings would repeat
    if equal_compute:
        arms = list(trials.values())
        for point in (p for p in points if p.get("baseline")):
            steps = equal_compute_steps(spec, point, arms)
            trial = resolve_trial(spec, point, lines, source, check_paths, baseline_finetune_steps=steps)
            trials.setdefault(trial.trial_id, trial)
    pretrains = pretrains_of(list(trials.values()))
    if not trials:
        raise SpecError([Problem("sweep", "the sweep expands to no trials", lines.get(("sweep",)), source)])
    _check_batches_split(spec, list(trials.values()), lines, source)
    return SweepPlan(spec, list(trials.values()), pretrains, spec_hash)


def load_spec(path: Path, overrides: Sequence[str] = (), smoke: bool = False, check_paths: bool = True) -> SweepPlan:
    """Read, override, (smoke-)shrink, validate and expand a sweep spec into a :class:`SweepPlan`.

    ``check_paths=False`` skips the existence checks of dataset paths (for planning away from the data).
    Raises :class:`SpecError` (exit code 2 in the CLI) before anything starts.
    """
    data, lines, touched = read_mapping(path, overrides)
    if smoke:
        data = smoke_spec(data)
    return plan_of(data, lines, str(path), touched, check_paths)


def plan_of(data: dict, lines: dict, source: str, touched=frozenset(), check_paths: bool = True) -> SweepPlan:
    """Validate spec data and expand it; the plan's hash is its resolved content's (:func:`layout.spec_hash`)."""
    spec = validate(SweepSpec, data, lines, source, touched, check_paths)
    return build_plan(spec, lines, source, spec_hash(spec.model_dump(mode="json")), check_paths)
