"""Pre-trainings shared by prefix: the state at step n of a longer run is the n-step run, bit for bit; which line
serves which length; milestones outlive the checkpoint rotation; a schedule that depends on the length is not shared;
a line keeps the lengths other processes ask of its run, also while it trains.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from maskdm_sweeps.layout import StageRun, SweepDir, step_file
from maskdm_sweeps.lines import MAIN
from maskdm_sweeps.sweep.milestones import Asking, KeptLengths, LineState, plan_lines
from maskdm_sweeps.sweepspec import SweepSpec, build_plan
from maskdm_sweeps.testing import tiny_trial_config
from maskdm_sweeps.trainer import NullReporter, fit
from maskdm_sweeps.trainer.checkpoint import list_checkpoints, load_checkpoint
from maskdm_sweeps.trainer.lr_schedule import learning_rate


def pretraining(steps: int, **pretrain) -> dict:
    return {
        "pretrain": {"steps": steps, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10, **pretrain},
        "finetune": {"steps": 12, "batch_size": 16},
        "mask": {"strategy": "patch", "rate": 0.5},
        "runtime": {"device": "cpu", "log_every_steps": 7, "checkpoint_every_steps": 25, "keep_checkpoints": 1},
    }


def same_tensors(a: dict, b: dict) -> bool:
    """Every tensor of two (nested) state dicts equal bit for bit."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            if not same_tensors(a[key], b[key]):
                return False
        elif isinstance(a[key], torch.Tensor) and not torch.equal(a[key], b[key]):
            return False
    return True


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory):
    """An 80-step pre-training keeping its 40-step state, and a separate 40-step pre-training."""
    root = tmp_path_factory.mktemp("prefix")
    long_run, short_run = root / "long", root / "short"
    fit(tiny_trial_config(**pretraining(80)), "pretrain", long_run, milestones=[40, 80])
    fit(tiny_trial_config(**pretraining(40)), "pretrain", short_run)
    return long_run, short_run


def test_a_finetuning_from_the_40_step_milestone_of_an_80_step_run_equals_one_from_a_separate_run(
    long_and_short, tmp_path
):
    long_run, short_run = long_and_short
    milestone = StageRun(long_run).milestone(40)
    separate = list_checkpoints(StageRun(short_run).checkpoints)[-1]
    assert separate.name == step_file(40, ".pt")
    # the whole state: weights, EMA, optimizer moments, every generator
    kept, alone = load_checkpoint(milestone), load_checkpoint(separate)
    assert kept["step"] == alone["step"] == 40
    assert same_tensors(kept["model"], alone["model"]) and same_tensors(kept["ema"], alone["ema"])
    assert same_tensors(kept["optimizer"]["state"], alone["optimizer"]["state"])
    assert all(torch.equal(kept["rng"][k], alone["rng"][k]) for k in ("torch", "data", "noise"))
    for init_from in ("online", "ema"):
        config = tiny_trial_config(
            **{**pretraining(40), "finetune": {"steps": 12, "batch_size": 16, "init_from": init_from}}
        )
        a = fit(config, "finetune", tmp_path / f"from-milestone-{init_from}", init_checkpoint=milestone)
        b = fit(config, "finetune", tmp_path / f"from-separate-{init_from}", init_checkpoint=separate)
        assert a.loss_final == b.loss_final
        assert same_tensors(load_checkpoint(Path(a.checkpoint))["model"], load_checkpoint(Path(b.checkpoint))["model"])
    # and the milestone is not the end of the run: the run went on learning
    final = load_checkpoint(StageRun(long_run).milestone(80))
    assert not same_tensors(final["model"], kept["model"])


def test_milestones_outlive_the_checkpoint_rotation_with_what_reaching_them_cost(long_and_short):
    long_run, _ = long_and_short
    assert [p.name for p in list_checkpoints(StageRun(long_run).checkpoints)] == [step_file(80, ".pt")]  # keep 1
    info = {step: json.loads(StageRun(long_run).milestone_info(step).read_text()) for step in (40, 80)}
    assert info[40]["train_tflops"] * 2 == pytest.approx(info[80]["train_tflops"])  # linear in the steps
    assert 0 < info[40]["wall_seconds"] < info[80]["wall_seconds"]


def test_a_run_extended_past_its_end_continues_as_if_it_had_never_stopped(long_and_short, tmp_path):
    long_run, _short_run = long_and_short
    extended = tmp_path / "extended"
    StageRun(extended).checkpoints.mkdir(parents=True)
    # a 40-step run, asked later for 80: it resumes from its last checkpoint
    fit(tiny_trial_config(**pretraining(40)), "pretrain", extended, milestones=[40])
    result = fit(tiny_trial_config(**pretraining(80)), "pretrain", extended, milestones=[80])
    assert result.steps == 80
    assert same_tensors(
        load_checkpoint(StageRun(extended).milestone(80))["model"],
        load_checkpoint(StageRun(long_run).milestone(80))["model"],
    )


def test_with_a_decay_to_the_end_lengths_are_trained_apart(tmp_path):
    # the rate at step 20 of a 40-step cosine run is not that of an 80-step one, so the states differ ...
    a, b = tmp_path / "a", tmp_path / "b"
    fit(tiny_trial_config(**pretraining(80, lr_decay="cosine")), "pretrain", a, milestones=[40])
    fit(tiny_trial_config(**pretraining(40, lr_decay="cosine")), "pretrain", b)
    assert not same_tensors(
        load_checkpoint(StageRun(a).milestone(40))["model"],
        load_checkpoint(list_checkpoints(StageRun(b).checkpoints)[-1])["model"],
    )
    # ... and a sweep over the length plans one run per length; without the decay, one run for both
    for decay, runs in (("cosine", 2), ("linear", 2), ("none", 1)):
        base = tiny_trial_config(**pretraining(40, lr_decay=decay)).model_dump(mode="json")
        plan = build_plan(
            SweepSpec.model_validate(
                {
                    "name": "decay",
                    "output_dir": str(tmp_path),
                    "base": base,
                    "sweep": {"axes": {"pretrain.steps": [40, 80]}},
                }
            )
        )
        assert len(plan.pretrains) == runs, decay
        if runs == 1:
            (shared,) = plan.pretrains.values()
            assert shared.asked == [40, 80]


def test_learning_rate_warms_up_then_holds_or_decays_to_zero_at_the_last_step():
    lr, warmup, total = 1e-3, 10, 110
    assert [learning_rate(s, lr, warmup, total) for s in (0, 5, 10, 60, 110)] == [0.0, 5e-4, lr, lr, lr]
    # the same constant rate whatever the length: why the first n steps of any run are the n-step run
    assert all(learning_rate(s, lr, warmup, 50) == learning_rate(s, lr, warmup, 5000) for s in range(51))
    for s in (10, 35, 60, 85, 110):
        progress = (s - warmup) / (total - warmup)
        assert learning_rate(s, lr, warmup, total, "cosine") == pytest.approx(
            lr * (1 + math.cos(math.pi * progress)) / 2
        )
        assert learning_rate(s, lr, warmup, total, "linear") == pytest.approx(lr * (1 - progress))
    assert learning_rate(total, lr, warmup, total, "cosine") == pytest.approx(0.0, abs=1e-18)


# ------------------------------------------------------------------------------------------------ which line serves
def line(name: str, head: int, kept: tuple[int, ...] = ()) -> LineState:
    return LineState(name, Path("/nowhere") / name, head, kept)


LAYOUT = SweepDir(Path("/results"), "s")


def test_a_fresh_run_trains_the_longest_length_once_keeping_each_shorter_one():
    jobs, serving = plan_lines(LAYOUT, "k", [40, 20, 80, 60, 20], [line(MAIN, 0)])
    assert [(j.line, j.start, j.target, j.milestones) for j in jobs] == [(MAIN, 0, 80, [20, 40, 60, 80])]
    assert {n: s.how for n, s in serving.items()} == {20: "train", 40: "train", 60: "train", 80: "train"}


def test_kept_lengths_train_nothing_and_longer_ones_extend_the_run_from_its_end():
    jobs, serving = plan_lines(LAYOUT, "k", [20, 40, 120], [line(MAIN, 80, (20, 40, 60, 80))])
    assert serving[20].how == serving[40].how == "kept"
    assert [(j.line, j.start, j.target, j.milestones) for j in jobs] == [(MAIN, 80, 120, [120])]
    assert serving[120].from_step == 80


def test_a_run_killed_part_way_continues_from_its_newest_checkpoint():
    jobs, _serving = plan_lines(LAYOUT, "k", [20, 40, 60, 80], [line(MAIN, 50, (20, 40))])
    assert [(j.start, j.target, j.milestones) for j in jobs] == [(50, 80, [60, 80])]


def test_a_length_the_run_passed_without_keeping_branches_from_the_newest_milestone_below_it():
    jobs, serving = plan_lines(LAYOUT, "k", [30, 50, 100], [line(MAIN, 80, (20, 40, 80))])
    by_line = {j.line: j for j in jobs}
    assert by_line[MAIN].start == 80 and by_line[MAIN].milestones == [100]
    branch = by_line["from-40-to-50"]
    assert branch.branch_from == (MAIN, 40) and branch.milestones == [50]  # 10 steps instead of 50
    assert by_line["from-20-to-30"].branch_from == (MAIN, 20)
    assert serving[30].unit == "k/from-20-to-30" and serving[50].from_step == 40


def test_an_existing_branch_is_extended_rather_than_branched_again():
    lines = [line(MAIN, 80, (20, 80)), line("from-20-to-30", 30, (30,))]
    jobs, serving = plan_lines(LAYOUT, "k", [30, 35], lines)
    assert serving[30].how == "kept"
    assert [(j.line, j.start, j.target) for j in jobs] == [("from-20-to-30", 30, 35)]


def test_a_milestone_whose_checkpoint_was_written_before_a_crash_is_kept_on_resume(long_and_short, tmp_path):
    # the process died after the step-40 checkpoint, before keeping it: the resume starts there and keeps it
    run = tmp_path / "crashed"
    fit(tiny_trial_config(**pretraining(40)), "pretrain", run)  # a checkpoint at 40, no milestone
    assert not StageRun(run).milestones.exists()
    fit(tiny_trial_config(**pretraining(80)), "pretrain", run, milestones=[40, 80])
    long_run, _ = long_and_short
    for step in (40, 80):
        assert same_tensors(
            load_checkpoint(StageRun(run).milestone(step))["model"],
            load_checkpoint(StageRun(long_run).milestone(step))["model"],
        )
        assert StageRun(run).milestone_info(step).exists()


class AsksAt(NullReporter):
    """Another process, as the trainer sees it: it asks for ``length`` of the run once the trainer reports ``step``."""

    def __init__(self, layout: SweepDir, key: str, step: int, length: int):
        self.layout, self.key, self.step, self.length = layout, key, step, length
        self.asking: Asking | None = None

    def metrics(self, step: int, values: dict) -> None:
        if step >= self.step and self.asking is None:
            self.asking = Asking(self.layout, self.key, [self.length]).__enter__()


def test_a_line_keeps_a_length_asked_while_it_trains_and_one_asked_before_it_started(tmp_path):
    layout = SweepDir(tmp_path, "sweep")
    main = layout.pretrain("key")
    settings = pretraining(30, batch_size=8)
    config = tiny_trial_config(**{**settings, "runtime": {**settings["runtime"], "log_every_steps": 1}})
    asker = AsksAt(layout, "key", step=5, length=20)
    with Asking(layout, "key", [10]) as before:
        fit(config, "pretrain", main.path, asker, milestones=KeptLengths(main, [30], refresh=0.0))
    assert main.milestone_steps() == [10, 20, 30]
    assert [p.name for p in main.asked_files()] == [asker.asking.files[0].name]  # each asker withdraws its own
    asker.asking.__exit__(None, None, None)
    assert not main.asked_files() and before.files
