"""The shared trainer: resume, checkpoints, stages, EMA, failure reasons, and the ``train`` command."""

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from maskdm_sweeps.layout import StageRun
from maskdm_sweeps.maskdm import UViT
from maskdm_sweeps.testing import CrashAt, InjectedFault, tiny_trial_config
from maskdm_sweeps.trainer import (
    EMA,
    JsonlReporter,
    MultiReporter,
    NullReporter,
    TrainingDiverged,
    ema_decay,
    fit,
    list_checkpoints,
    load_latest_checkpoint,
    read_jsonl_metrics,
    run_trial,
)


def losses(path: Path) -> dict[int, float]:
    return {step: v["train/loss"] for step, v in read_jsonl_metrics(path) if "train/loss" in v}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MASKDM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# EMA without warmup and a fast decay, so that the EMA weights differ from the online ones within a few steps
FAST_EMA = {"decay": 0.9, "warmup": False}


def state_equal(a, b) -> bool:
    """Whether two nested checkpoint states (dicts, lists, tensors, numbers) are exactly equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, stage):
    cfg = tiny_trial_config(pretrain={"steps": 30}, finetune={"steps": 30}, ema=FAST_EMA)
    whole = fit(cfg, stage, tmp_path / "whole", JsonlReporter(tmp_path / "whole.jsonl"))
    with pytest.raises(InjectedFault):
        fit(cfg, stage, tmp_path / "crash", MultiReporter(CrashAt(17), JsonlReporter(tmp_path / "crash.jsonl")))
    assert [p.name for p in list_checkpoints(StageRun(tmp_path / "crash").checkpoints)] == ["step_000000010.pt"]
    resumed = fit(cfg, stage, tmp_path / "crash", JsonlReporter(tmp_path / "resumed.jsonl"))
    expected, got = losses(tmp_path / "whole.jsonl"), losses(tmp_path / "resumed.jsonl")
    assert sorted(got) == list(range(11, 31))  # continued from the step-10 checkpoint
    assert [got[s] for s in got] == [expected[s] for s in got]  # bit-identical on the CPU
    assert resumed.loss_final == whole.loss_final and resumed.steps == 30
    a, b = (torch.load(Path(r.checkpoint), weights_only=True) for r in (whole, resumed))
    assert not state_equal(a["ema"]["model"], a["model"])  # the EMA is a state of its own...
    for part in ("model", "ema", "optimizer", "rng"):  # ...restored exactly, as are the weights, Adam and the seeds
        assert state_equal(a[part], b[part]), part


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = tiny_trial_config(finetune={"steps": 30}, runtime={"keep_checkpoints": 3})
    fit(cfg, "finetune", tmp_path / "run", JsonlReporter(tmp_path / "first.jsonl"))
    ckpts = list_checkpoints(StageRun(tmp_path / "run").checkpoints)
    assert [p.name for p in ckpts] == ["step_000000010.pt", "step_000000020.pt", "step_000000030.pt"]
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    state, path = load_latest_checkpoint(StageRun(tmp_path / "run").checkpoints)
    assert path == ckpts[-2] and state["step"] == 20
    # and the stage continues from it: steps 21-30 are trained again, with the losses of the first time
    result = fit(cfg, "finetune", tmp_path / "run", JsonlReporter(tmp_path / "again.jsonl"))
    first, again = losses(tmp_path / "first.jsonl"), losses(tmp_path / "again.jsonl")
    assert sorted(again) == list(range(21, 31)) and result.steps == 30
    assert again == {step: first[step] for step in range(21, 31)}


def test_finetune_starts_from_the_pretrained_weights(tmp_path):
    cfg = tiny_trial_config(pretrain={"steps": 150}, finetune={"steps": 1}, mask={"strategy": "patch", "rate": 0.25})
    pre = fit(cfg, "pretrain", tmp_path / "pre")
    fit(
        cfg, "finetune", tmp_path / "warm", JsonlReporter(tmp_path / "warm.jsonl"), init_checkpoint=Path(pre.checkpoint)
    )
    fit(cfg, "finetune", tmp_path / "cold", JsonlReporter(tmp_path / "cold.jsonl"))
    warm, cold = losses(tmp_path / "warm.jsonl")[1], losses(tmp_path / "cold.jsonl")[1]
    assert warm < 0.5 * cold, (warm, cold)  # the same first batch (same seeds), far lower loss


@pytest.mark.parametrize("init_from", ["online", "ema"])
def test_finetune_starts_from_the_pretrained_weights_it_is_told_to(tmp_path, init_from):
    cfg = tiny_trial_config(
        pretrain={"steps": 20}, ema=FAST_EMA, finetune={"steps": 1, "init_from": init_from, "lr": 1e-9}
    )  # 1 step that moves ~nothing
    pre_checkpoint = Path(fit(cfg, "pretrain", tmp_path / "pre").checkpoint)
    pre = torch.load(pre_checkpoint, weights_only=True)
    fit(cfg, "finetune", tmp_path / "ft", init_checkpoint=pre_checkpoint)
    ft = torch.load(list_checkpoints(StageRun(tmp_path / "ft").checkpoints)[-1], weights_only=True)["model"]
    chosen = pre["model"] if init_from == "online" else pre["ema"]["model"]
    other = pre["ema"]["model"] if init_from == "online" else pre["model"]
    for name in ("pos_embed", "head.weight", "patch_embed.weight"):
        assert (ft[name] - chosen[name]).abs().max() < 1e-6, name  # one AdamW step of lr 1e-9 from the chosen
        assert (ft[name] - other[name]).abs().max() > 1e-4, name  # and far from the other weights


def test_ema_decay_follows_the_ema_pytorch_warmup():
    assert [ema_decay(k, 0.999) for k in (1, 50, 101)] == [0.0, 0.0, 0.0]
    for k in (102, 500, 10_000):
        assert ema_decay(k, 0.999) == pytest.approx(min(0.999, 1 - (1 + k - 101) ** (-2 / 3)))  # the method's rule
    assert ema_decay(31_000, 0.999) < 0.999 <= ema_decay(31_800, 0.999)  # beta reached after ~31.6k steps
    assert ema_decay(5, 0.99, warmup=False) == 0.99


def test_ema_update_is_the_moving_average():
    torch.manual_seed(0)
    online = torch.nn.Linear(3, 2)
    ema = EMA(online, beta=0.9, warmup=False)
    before = ema.model.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema.update(online)
    torch.testing.assert_close(ema.model.weight, 0.9 * before + 0.1 * online.weight)


def test_nan_loss_stops_the_stage_with_a_reason(tmp_path):
    cfg = tiny_trial_config(finetune={"steps": 50, "lr": 1e12})
    with pytest.raises(TrainingDiverged, match=r"loss became NaN or infinite at step \d+"):
        fit(cfg, "finetune", tmp_path / "run")


def test_a_nan_between_log_steps_stops_the_stage_before_it_is_evaluated_or_saved(tmp_path):
    # logging every 50 steps, evaluating every 2 and saving every 10: the divergence must be caught at the first
    # evaluation after it, not crash the FID's linear algebra on NaN samples
    cfg = tiny_trial_config(
        finetune={"steps": 50, "lr": 1e12},
        eval={"num_samples": 32, "batch_size": 32, "every_steps": 2, "sampling_steps": 3},
        runtime={"log_every_steps": 50, "checkpoint_every_steps": 10},
    )
    reports = {}

    class Record(NullReporter):
        def metrics(self, step, values):
            reports.setdefault(step, {}).update(values)

    with pytest.raises(TrainingDiverged) as err:
        fit(cfg, "finetune", tmp_path / "run", Record())
    bad = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    assert bad <= 4  # lr 1e12 breaks the model within a couple of steps
    fids = [v["eval/fid"] for v in reports.values() if "eval/fid" in v]
    assert all(math.isfinite(f) for f in fids) and len(fids) <= bad // 2  # only evaluations before the NaN
    assert not list(StageRun(tmp_path / "run").checkpoints.glob("*.pt"))  # the diverged weights were never saved


def test_two_stage_trial_evaluates_with_the_in_domain_fid(tmp_path):
    cfg = tiny_trial_config(
        pretrain={"steps": 20},
        finetune={"steps": 20},
        eval={"num_samples": 64, "every_steps": 10, "grid_size": 16},
    )
    reports = {}
    results = run_trial(
        cfg, tmp_path, lambda stage: reports.setdefault(stage, JsonlReporter(tmp_path / f"{stage}.jsonl"))
    )
    assert set(results) == {"pretrain", "finetune"}
    assert results["pretrain"].effective_mask_rate == 0.5 and results["pretrain"].fid is None
    fids = [(s, v["eval/fid"]) for s, v in read_jsonl_metrics(tmp_path / "finetune.jsonl") if "eval/fid" in v]
    assert [s for s, _ in fids] == [10, 20] and all(math.isfinite(f) and f > 0 for _, f in fids)
    assert results["finetune"].fid == fids[-1][1] and results["finetune"].fid_best == min(f for _, f in fids)
    samples = StageRun(tmp_path / "finetune").samples
    assert sorted(p.name for p in samples.iterdir()) == ["step_000000010.png", "step_000000020.png"]
    # re-running a finished trial reports no training step, rewrites no checkpoint and returns the same results
    written = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")}
    again = run_trial(cfg, tmp_path, lambda stage: JsonlReporter(tmp_path / f"again-{stage}.jsonl"))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")} == written
    assert not any(
        read_jsonl_metrics(tmp_path / f"again-{stage}.jsonl")
        for stage in ("pretrain", "finetune")
        if (tmp_path / f"again-{stage}.jsonl").exists()
    )
    assert again["finetune"].fid == results["finetune"].fid and again["finetune"].steps == 20


def evaluate_checkpoint_weights(cfg, checkpoint: Path, which: str, out: Path) -> float:
    """FID of a checkpoint's online or EMA weights, evaluated apart from the trainer by the public Evaluator."""
    from maskdm_sweeps.data import load_dataset
    from maskdm_sweeps.maskdm import UViT, build_schedule
    from maskdm_sweeps.trainer.evaluation import Evaluator

    state = torch.load(checkpoint, weights_only=True)
    net = UViT(cfg.model_config_resolved())
    net.load_state_dict(state["model"] if which == "online" else state["ema"]["model"])
    evaluator = Evaluator(cfg, load_dataset(cfg.data), torch.device("cpu"), None)
    fid = evaluator.evaluate(net, build_schedule(cfg.diffusion.schedule, cfg.diffusion.num_timesteps), 0, out).fid
    assert fid is not None
    return fid


@pytest.mark.parametrize("weights", ["ema", "online"])
def test_the_reported_fid_is_that_of_the_configured_weights(tmp_path, weights):
    cfg = tiny_trial_config(finetune={"steps": 20}, ema=FAST_EMA, eval={"num_samples": 64, "weights": weights})
    result = fit(cfg, "finetune", tmp_path / "run")
    other = "online" if weights == "ema" else "ema"
    assert result.fid == evaluate_checkpoint_weights(cfg, Path(result.checkpoint), weights, tmp_path / "a")
    assert result.fid != evaluate_checkpoint_weights(cfg, Path(result.checkpoint), other, tmp_path / "b")


class RecordingUViT(UViT):
    """The trainer's U-ViT, recording its initial weights, the keep-indices it is given and the tokens it runs on."""

    built: ClassVar[list["RecordingUViT"]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial = {k: v.clone() for k, v in self.state_dict().items()}
        self.keep_indices: list[torch.Tensor | None] = []
        self.tokens_seen: list[int] = []
        self.mid_block.register_forward_hook(lambda module, args, out: self.tokens_seen.append(out.shape[1]))
        RecordingUViT.built.append(self)

    def forward(self, x_t, t, keep_idx=None):
        self.keep_indices.append(keep_idx)
        return super().forward(x_t, t, keep_idx)


def test_a_pretraining_step_runs_the_network_on_the_kept_patches_only(tmp_path, monkeypatch):
    import maskdm_sweeps.trainer.loop as loop

    monkeypatch.setattr(loop, "UViT", RecordingUViT)
    RecordingUViT.built.clear()
    # one image per step, no weight decay: a patch position that was masked gets no update at all
    cfg = tiny_trial_config(
        pretrain={"steps": 1, "batch_size": 1, "weight_decay": 0.0}, mask={"strategy": "patch", "rate": 0.5}
    )
    result = fit(cfg, "pretrain", tmp_path / "run")
    net = RecordingUViT.built[0]
    grid = cfg.model_config_resolved().grid  # 4 x 4 patches of the 8 x 8 digits
    (keep,) = net.keep_indices
    assert keep.shape == (1, grid * grid // 2)  # K = 8 of N = 16
    assert net.tokens_seen == [1 + keep.shape[1]]  # the time token and the K kept patches, nothing else
    after = torch.load(result.checkpoint, weights_only=True)["model"]["pos_embed"][0]  # (1 + N, D)
    before = net.initial["pos_embed"][0]
    moved = {i for i in range(grid * grid) if not torch.equal(after[1 + i], before[1 + i])}
    assert moved == set(keep[0].tolist())  # only the positions of the visible patches were trained


def test_a_masked_step_differs_from_an_unmasked_step_on_the_same_batch(tmp_path):
    first = {}
    for rate in (0.0, 0.5):  # the same seeds: the same images, timesteps and noise in step 1
        cfg = tiny_trial_config(pretrain={"steps": 1}, mask={"strategy": "patch", "rate": rate})
        fit(cfg, "pretrain", tmp_path / str(rate), JsonlReporter(tmp_path / f"{rate}.jsonl"))
        first[rate] = losses(tmp_path / f"{rate}.jsonl")[1]
    assert first[0.0] != first[0.5]


TRIAL_YAML = """\
seed: 1
data:
  name: digits
  image_size: 8
model:
  preset: tiny
pretrain:
  steps: 10
  batch_size: 16
mask:
  strategy: block
  rate: 0.5
  block_size: 2
finetune:
  steps: 10
  batch_size: 16
eval:
  num_samples: 32
  batch_size: 32
  grid_size: 16
  sampling_steps: 4
  backend: digits-classifier
runtime:
  device: cpu
  log_every_steps: 5
  checkpoint_every_steps: 5
"""


def maskdm_sweep(*args, cwd=None):
    return subprocess.run(
        [str(Path(sys.executable).with_name("maskdm-sweep")), *args], capture_output=True, text=True, cwd=cwd
    )


def test_train_command_runs_both_stages_and_prints_its_outputs(tmp_path):
    spec = tmp_path / "trial.yaml"
    spec.write_text(TRIAL_YAML)
    out = maskdm_sweep("train", str(spec), "--out", str(tmp_path / "out"), "--set", "finetune.steps=12")
    assert out.returncode == 0, out.stderr
    assert f"outputs: {tmp_path / 'out'}" in out.stdout
    trained = StageRun(tmp_path / "out" / "finetune")  # `train` names each stage run after its stage
    assert trained.result.exists()
    assert list_checkpoints(trained.checkpoints)[-1].name == "step_000000012.pt"


@pytest.mark.parametrize(
    "edit, field, line",
    [
        (lambda s: s.replace("  block_size: 2", "  blok_size: 2"), "mask.blok_size", 13),
        (lambda s: s.replace("  name: digits\n", "  name: image_folder\n  path: /nonexistent/celeba\n"), "data", 2),
        (
            lambda s: s.replace(
                "backend: digits-classifier", "backend: inception\n  fid_weights: /nonexistent/inception.pt"
            ),
            "eval",
            17,
        ),
        (lambda s: s.replace("  rate: 0.5", "  rate: 1.5"), "mask.rate", 12),
        (lambda s: s.replace("  block_size: 2", "  block_size: 3"), "", None),
    ],
    ids=["typo", "missing-data-path", "missing-fid-weights", "rate-out-of-range", "block-does-not-divide"],
)
def test_bad_configs_fail_before_training_with_the_reason(tmp_path, edit, field, line):
    spec = tmp_path / "trial.yaml"
    spec.write_text(edit(TRIAL_YAML))
    out = maskdm_sweep("train", str(spec), "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert not (tmp_path / "out").exists()  # nothing started
    if field:
        assert f"{field}:" in out.stderr
    if line:
        assert f"trial.yaml:{line})" in out.stderr
    if "nonexistent" in edit(TRIAL_YAML):
        assert "/nonexistent/" in out.stderr


def test_compiling_trials_sample_through_one_compiled_denoiser_with_the_same_images(tmp_path):
    from maskdm_sweeps.data import load_dataset
    from maskdm_sweeps.maskdm import UViT, build_schedule
    from maskdm_sweeps.trainer.evaluation import Evaluator

    plain_cfg = tiny_trial_config(eval={"num_samples": 0, "grid_size": 8, "batch_size": 8})
    compiled_cfg = tiny_trial_config(
        eval={"num_samples": 0, "grid_size": 8, "batch_size": 8}, runtime={"compile": True}
    )
    data, device = load_dataset(plain_cfg.data), torch.device("cpu")
    torch.manual_seed(0)
    net = UViT(plain_cfg.model_config_resolved())
    schedule = build_schedule("linear", 1000)
    plain = Evaluator(plain_cfg, data, device, None)
    compiled = Evaluator(compiled_cfg, data, device, None, compile_backend="eager")  # dynamo, not inductor's C++
    assert plain.compiled(net) is net
    fast = compiled.compiled(net)
    assert fast is not net and compiled.compiled(net) is fast  # compiled once per network, then reused
    a = plain.evaluate(net, schedule, 1, tmp_path / "plain")
    b = compiled.evaluate(net, schedule, 1, tmp_path / "compiled")
    from PIL import Image

    assert list(Image.open(a.grid_path).getdata()) == list(Image.open(b.grid_path).getdata())


def test_every_reporter_hears_how_the_stage_ended():
    """``finish`` is part of the Reporter protocol: a MultiReporter passes it on to each of its reporters."""
    from maskdm_sweeps.trainer import Reporter

    class Ends(NullReporter):
        def __init__(self):
            self.ended = []

        def finish(self, status, cost=None):
            self.ended.append((status, cost))

    a, b = Ends(), Ends()
    MultiReporter(a, NullReporter(), b).finish("FINISHED", {"cost/wall_seconds": 1.0})
    assert a.ended == b.ended == [("FINISHED", {"cost/wall_seconds": 1.0})]
    assert all(isinstance(r, Reporter) for r in (a, NullReporter(), MultiReporter()))  # runtime_checkable: finish too
    NullReporter().finish("KILLED")  # nothing to close
