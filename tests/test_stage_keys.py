"""Stage keys: which settings decide a pre-training (and so which trials share one), and which do not."""

import pytest

from maskdm_sweeps.sweepspec import SweepSpec, build_plan, identity
from maskdm_sweeps.sweepspec.identity import stage_hash
from maskdm_sweeps.testing import tiny_trial_config
from maskdm_sweeps.trainer.config import EvalConfig, RuntimeConfig

BASE = {"pretrain": {"steps": 20}, "finetune": {"steps": 20}}

# every eval.* field and every runtime.* field but precision, each with a value other than the base's
IGNORED_BY_PRETRAINING = {
    "eval": {
        "every_steps": 7,
        "stages": ["pretrain", "finetune"],
        "num_samples": 64,
        "batch_size": 8,
        "sampler": "ddpm",
        "sampling_steps": 9,
        "eta": 0.0,
        "weights": "online",
        "backend": "inception",
        "fid_weights": "/elsewhere/inception.pt",
        "grid_size": 4,
        "timestep_spacing": "leading",
        "eps_after_clip": "recomputed",
        "fid_repeats": 3,
    },
    "runtime": {
        "device": "auto",
        "compile": True,
        "compile_mode": "reduce-overhead",
        "log_every_steps": 3,
        "checkpoint_every_steps": 4,
        "keep_checkpoints": 5,
    },
}

# one change per setting the pre-training depends on
CHANGES_PRETRAINING = {
    "seed": {"seed": 1},
    "data.image_size": {"data": {"image_size": 16}},
    "data.hflip": {"data": {"hflip": True}},
    "model.preset": {"model": {"preset": "uvit-digits"}},
    "model.patch_size": {"model": {"patch_size": 4}},
    "diffusion.schedule": {"diffusion": {"schedule": "cosine"}},
    "diffusion.num_timesteps": {"diffusion": {"num_timesteps": 500}},
    "mask.rate": {"mask": {"rate": 0.25}},
    "mask.strategy": {"mask": {"strategy": "block", "rate": 0.5, "block_size": 2}},
    "pretrain.lr_decay": {"pretrain": {"lr_decay": "cosine"}},
    "pretrain.batch_size": {"pretrain": {"batch_size": 16}},
    "pretrain.lr": {"pretrain": {"lr": 1e-3}},
    "pretrain.warmup_steps": {"pretrain": {"warmup_steps": 5}},
    "pretrain.grad_clip": {"pretrain": {"grad_clip": 1.0}},
    "pretrain.betas": {"pretrain": {"betas": (0.9, 0.999)}},
    "pretrain.weight_decay": {"pretrain": {"weight_decay": 0.0}},
    "ema.decay": {"ema": {"decay": 0.99}},
    "ema.warmup": {"ema": {"warmup": False}},
    "runtime.precision": {"runtime": {"precision": "bf16"}},
}


def config(**overrides):
    """The tiny trial with a pre-training, and ``overrides`` (nested dicts) merged into it."""
    merged = {section: dict(values) for section, values in BASE.items()}
    for section, values in overrides.items():
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
    return tiny_trial_config(**merged)


def pretrain_key(**overrides) -> str:
    return stage_hash(config(**overrides), "pretrain")


def test_the_keys_of_a_trial_are_the_ones_finished_sweeps_were_filed_under():
    # trial ids and pre-training keys name directories on disk: a changed hash orphans every finished run, so these
    # are the values the tiny trial had when the keys were computed in trainer/config.py
    masked, baseline = config(), config(pretrain={"steps": 0})
    assert (stage_hash(masked, "pretrain"), stage_hash(masked, "finetune")) == ("778aa35d1e63d40d", "79bdbe98491056b4")
    assert stage_hash(baseline, "finetune") == "ee878948d5d2f9e0"
    assert identity.trial_id(masked) == "t-79bdbe9849"
    assert (identity.pretrain_key(masked), identity.pretrain_key(baseline)) == ("778aa35d1e63d40d", None)


def test_the_ignored_list_names_every_eval_and_runtime_setting_but_precision():
    # a new eval or runtime field must be sorted into one list or the other
    assert set(IGNORED_BY_PRETRAINING["eval"]) == set(EvalConfig.model_fields)
    assert set(IGNORED_BY_PRETRAINING["runtime"]) == set(RuntimeConfig.model_fields) - {"precision"}


@pytest.mark.parametrize("section, field", [(s, f) for s, fields in IGNORED_BY_PRETRAINING.items() for f in fields])
def test_eval_and_runtime_settings_leave_the_pretraining_key_unchanged(section, field, monkeypatch):
    monkeypatch.setattr("maskdm_sweeps.metrics.resolve_inception_weights", lambda path: path)  # no weights file here
    value = IGNORED_BY_PRETRAINING[section][field]
    changed = config(**{section: {field: value}})
    assert getattr(getattr(changed, section), field) != getattr(getattr(config(), section), field)
    assert pretrain_key(**{section: {field: value}}) == pretrain_key()


@pytest.mark.parametrize("setting", list(CHANGES_PRETRAINING))
def test_each_setting_of_the_pretraining_changes_its_key(setting):
    assert pretrain_key(**CHANGES_PRETRAINING[setting]) != pretrain_key()


def test_the_length_of_a_pretraining_is_not_part_of_its_key_unless_its_schedule_depends_on_it():
    # constant after warmup: the first 20 steps of a 30-step run are the 20-step run, so both are one run
    assert pretrain_key(pretrain={"steps": 30}) == pretrain_key()
    assert pretrain_key(pretrain={"steps": 30, "warmup_steps": 5}) == pretrain_key(pretrain={"warmup_steps": 5})
    # decayed to the end: the rate at step 10 depends on the length, so they are two runs
    for decay in ("cosine", "linear"):
        assert pretrain_key(pretrain={"steps": 30, "lr_decay": decay}) != pretrain_key(pretrain={"lr_decay": decay})
    # the trial (its fine-tuning key) always depends on the length it starts from
    assert stage_hash(config(pretrain={"steps": 30}), "finetune") != stage_hash(config(), "finetune")


def test_finetune_settings_leave_the_pretraining_key_unchanged_but_change_the_trial():
    base = config()
    other = config(finetune={"lr": 1e-3, "steps": 30, "init_from": "ema"})
    assert stage_hash(other, "pretrain") == stage_hash(base, "pretrain")
    assert stage_hash(other, "finetune") != stage_hash(base, "finetune")


def sweep_spec(axes: dict, seeds: list[int] | None = None) -> SweepSpec:
    base = config().model_dump(mode="json")
    return SweepSpec.model_validate({"name": "keys", "base": base, "sweep": {"axes": axes, "seeds": seeds or [0]}})


def test_a_sweep_over_evaluation_runtime_and_finetuning_settings_shares_one_pretraining():
    plan = build_plan(
        sweep_spec({"eval.sampling_steps": [5, 10], "runtime.log_every_steps": [1, 5], "finetune.lr": [1e-3, 2e-3]})
    )
    assert len(plan.trials) == 4  # runtime settings do not make another trial either
    assert len(plan.pretrains) == 1
    (shared,) = plan.pretrains.values()
    assert sorted(shared.trial_ids) == sorted(t.trial_id for t in plan.trials)


def test_a_sweep_over_mask_rates_and_seeds_has_one_pretraining_per_rate_and_seed():
    plan = build_plan(sweep_spec({"mask.rate": [0.25, 0.5], "eval.sampling_steps": [5, 10]}, seeds=[0, 1]))
    assert len(plan.trials) == 8
    assert len(plan.pretrains) == 4  # 2 rates x 2 seeds; the evaluation axis shares
    assert all(len(p.trial_ids) == 2 for p in plan.pretrains.values())
