"""A stage run's compute in FLOPs as the trainer reports it, against independent counts: ``FlopCounterMode`` on the
network for training, and the evaluation protocol's arithmetic (images x sampling steps x forward + features)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskdm_sweeps.maskdm import UViT
from maskdm_sweeps.metrics import DigitsClassifierBackend, feature_flops_per_image, fid_inception_architecture
from maskdm_sweeps.metrics.inception import INCEPTION_POOL3_FLOPS
from maskdm_sweeps.testing import flop_counter_cpu_attention, tiny_trial_config
from maskdm_sweeps.trainer import JsonlReporter, fit
from maskdm_sweeps.trainer.compute import evaluation_steps


def counted_forward(config, kept: int) -> int:
    """FLOPs of one forward pass on one image with ``kept`` patches, as torch's counter sees them."""
    torch.manual_seed(0)
    mc = config.model_config_resolved()
    net = UViT(mc)
    x = torch.randn(1, mc.in_chans, mc.img_size, mc.img_size)
    keep = None if kept == mc.num_patches else torch.arange(kept)[None]  # (1, K)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_counter_cpu_attention()) as counter:
        net(x, torch.tensor([500]), keep)
    return counter.get_total_flops()


def test_a_pretraining_reports_3x_forward_flops_of_the_kept_tokens_per_image_and_step(tmp_path):
    cfg = tiny_trial_config(
        pretrain={"steps": 6, "batch_size": 8}, mask={"strategy": "patch", "rate": 0.75}, eval={"stages": ["finetune"]}
    )
    result = fit(cfg, "pretrain", tmp_path / "pre")
    kept = 16 - int(0.75 * 16)  # 8x8 digits in 2x2 patches: 16 patches, int(rate * N) dropped
    assert result.train_tflops * 1e12 == pytest.approx(6 * 8 * 3 * counted_forward(cfg, kept), rel=1e-12)
    assert result.eval_tflops == 0.0  # the pre-training is not evaluated


def test_a_finetuning_reports_its_evaluations_as_samples_x_steps_x_forward_plus_features(tmp_path):
    cfg = tiny_trial_config(
        finetune={"steps": 8, "batch_size": 4},
        eval={
            "num_samples": 24,
            "batch_size": 24,
            "grid_size": 16,
            "sampling_steps": 3,
            "every_steps": 3,
            "fid_repeats": 2,
        },
    )
    result = fit(cfg, "finetune", tmp_path / "ft", JsonlReporter(tmp_path / "metrics.jsonl"))
    forward, features = counted_forward(cfg, 16), DigitsClassifierBackend.flops_per_image
    per_eval = 24 * 3 * forward + 24 * features  # max(num_samples, grid) images sampled, num_samples scored
    final_extra = (24 * 3 * forward + 24 * features) + 24 * features  # one more repeat, and the floor's real images
    assert evaluation_steps(cfg, "finetune") == [3, 6, 8]
    assert result.eval_tflops * 1e12 == pytest.approx(3 * per_eval + final_extra, rel=1e-12)
    assert result.train_tflops * 1e12 == pytest.approx(8 * 4 * 3 * forward, rel=1e-12)
    # the metrics file carries the running totals: at step 6 two evaluations, at the end all three
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["values"]["cost/eval_tflops"] for r in records if "eval/fid" in r.get("values", {})}
    assert evals[6] * 1e12 == pytest.approx(2 * per_eval, rel=1e-12)


def test_the_feature_networks_flops_are_what_torchs_counter_counts():
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        DigitsClassifierBackend().network(torch.zeros(1, 1, 16, 16))  # embed and head, as the evaluator runs them
    assert feature_flops_per_image("digits-classifier") == counter.get_total_flops()


@pytest.mark.slow
def test_the_inception_constant_is_what_torchs_counter_counts_up_to_pool3():
    net = fid_inception_architecture().eval()
    net.fc = torch.nn.Identity()  # pool3 features: the 1008-way fc is not run
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, 299, 299))
    assert feature_flops_per_image("inception") == INCEPTION_POOL3_FLOPS == counter.get_total_flops()
