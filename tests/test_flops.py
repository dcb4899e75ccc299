"""Exact FLOP counts (``maskdm.flops``) against torch's ``FlopCounterMode`` on real passes of the U-ViT.

What the counter counts: matmuls (``mm``, ``addmm``, ``bmm``), convolutions and attention kernels, each as 2 x MACs.
What it leaves out, as ``maskdm.flops`` does: every elementwise op (LayerNorm, GELU, SiLU, softmax, the attention
scale, residual, position and bias adds, the loss), gathers, concatenations, reshapes. Note that in this torch it
has no formula for the CPU's fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu`` and its
backward) and would count the attention as 0 FLOPs on the CPU; the tests hand it torch's own SDPA formulas for that
kernel, and one test checks the unfused attention (plain ``bmm``, no mapping needed) counts the same.

The counts are per image: each pass runs a batch of 2 and the counter's total is halved.
"""

from dataclasses import replace
from fractions import Fraction
from functools import cache

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskdm_sweeps.maskdm import (
    MODEL_PRESETS,
    BlockMask,
    PatchMask,
    UViT,
    backward_flops,
    effective_mask_rate,
    eval_flops_per_image,
    forward_flops,
    forward_flops_breakdown,
    mdsm_loss,
    train_flops_per_image,
)
from maskdm_sweeps.sweep.estimate import flops_per_image
from maskdm_sweeps.testing import flop_counter_cpu_attention

aten = torch.ops.aten
CPU_ATTENTION = flop_counter_cpu_attention()
BATCH = 2
CONFIGS = {
    **MODEL_PRESETS,
    # the optional U-ViT parts no preset uses
    "tiny+time_mlp+final_conv": replace(MODEL_PRESETS["tiny"], time_mlp=True, final_conv=True),
    "tiny+time_mlp": replace(MODEL_PRESETS["tiny"], time_mlp=True),
    # SPRINT's parts: a dense encoder (the mixer), the fusion Linear(2D, D) and the decoder on every position
    "tiny+sprint": replace(MODEL_PRESETS["tiny"], mixer_depth=1, fusion_depth=2),
}
CASES = [(name, rate) for name, cfg in CONFIGS.items() for rate in (0.0, 0.9) if not (cfg.final_conv and rate)]


@cache
def model_of(name: str, device: str = "cpu") -> UViT:
    torch.manual_seed(0)
    with torch.device(device):
        return UViT(CONFIGS[name])


def inputs(name: str, rate: float, device: str = "cpu"):
    """A batch of images, timesteps and keep indices drawn by the patch mask (None at rate 0: all patches)."""
    cfg = CONFIGS[name]
    x = torch.randn(BATCH, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 700])
    keep = PatchMask(rate).sample(BATCH, cfg.grid, torch.Generator().manual_seed(2)) if rate else None
    kept = cfg.num_patches if keep is None else keep.shape[1]
    assert kept == cfg.num_patches - int(rate * cfg.num_patches)

    def move(v):
        return v if v is None else v.to(device)

    return move(x), move(t), move(keep), kept


def count_step(name: str, rate: float, device: str) -> tuple[int, int]:
    """(forward, forward + loss + backward) FLOPs per image counted by FlopCounterMode on ``device``."""
    model, (x, t, keep, _) = model_of(name, device), inputs(name, rate, device)
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        out = model(x, t, keep)
        forward = counter.get_total_flops()
        every_position = CONFIGS[name].fusion_depth > 0  # SPRINT predicts every patch: its loss scores them all
        mdsm_loss(out, torch.randn_like(x), CONFIGS[name].patch_size, None if every_position else keep).backward()
    model.zero_grad(set_to_none=True)
    return forward // BATCH, counter.get_total_flops() // BATCH


@pytest.mark.parametrize(
    "name, rate", [pytest.param(*c, marks=pytest.mark.slow) if c == ("maskdm-b256", 0.0) else c for c in CASES]
)  # b256: ~25-45 s
def test_forward_matches_the_flop_counter(name, rate):
    model, (x, t, keep, kept) = model_of(name), inputs(name, rate)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        model(x, t, keep)
    counted = counter.get_total_flops() / BATCH
    exact = forward_flops(CONFIGS[name], kept)
    assert abs(exact / counted - 1) < 0.02, (exact, counted)
    assert exact == counted  # measured: equal to the FLOP for every case, so hold it to that


@pytest.mark.parametrize("name, rate", [("tiny", 0.0), ("uvit-digits", 0.9), ("maskdm-celeba64", 0.9)])
def test_unfused_attention_counts_the_same(name, rate):
    """timm's unfused path (q @ k^T, softmax, @ v as plain bmm): the counter needs no mapping there."""
    model, (x, t, keep, kept) = model_of(name), inputs(name, rate)
    blocks = [*model.in_blocks, model.mid_block, *model.out_blocks]
    try:
        for blk in blocks:
            blk.attn.fused_attn = False
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, t, keep)
    finally:
        for blk in blocks:
            blk.attn.fused_attn = True
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["aten.bmm"] / BATCH == sum(
        forward_flops_breakdown(CONFIGS[name], kept)[k] for k in ("attn_scores", "attn_values")
    )
    assert abs(forward_flops(CONFIGS[name], kept) / (counter.get_total_flops() / BATCH) - 1) < 0.02


@pytest.mark.parametrize("name, rate", CASES)
def test_backward_on_the_meta_device_is_the_exact_structure(name, rate):
    """The meta device runs attention unfused (bmm), so nothing is recomputed: backward = 2 x forward except the
    patch embedding (and the time MLP's first linear), whose input needs no gradient: weight gradient only."""
    cfg = CONFIGS[name]
    kept = cfg.num_patches - int(rate * cfg.num_patches)
    forward, step = count_step(name, rate, "meta")
    assert abs(forward / forward_flops(cfg, kept) - 1) < 0.02
    assert step == forward + backward_flops(cfg, kept, recompute_attention=False)
    # the convention 3 x forward over-counts by exactly the input gradients nobody computes
    parts = forward_flops_breakdown(cfg, kept)
    assert train_flops_per_image(cfg, kept) - step == parts["patch_embed"] + parts["time_mlp"] // 2
    # 3 x forward is within 2% of the count except for tiny-rgb at 90% (measured +5.9%: 3 tokens, 48-pixel patches,
    # so the patch embedding's missing input gradient weighs)
    assert 3 * forward / step - 1 < (0.06 if (name, rate) == ("tiny-rgb", 0.9) else 0.02)


@pytest.mark.parametrize("name, rate", [c for c in CASES if c != ("maskdm-b256", 0.0)])  # 4097 tokens: meta only
def test_backward_on_the_cpu_recomputes_the_attention_scores(name, rate):
    """The CPU's fused attention kernel recomputes Q K^T in its backward (torch's formula counts 5 bmm, not 4)."""
    cfg = CONFIGS[name]
    kept = cfg.num_patches - int(rate * cfg.num_patches)
    forward, step = count_step(name, rate, "cpu")
    assert step == forward + backward_flops(cfg, kept, recompute_attention=True)


def closed_form_forward(width, depth, mlp_ratio, patch, chans, patches, tokens):
    """One forward on ``tokens`` tokens, written out apart from the module: linears scale with the tokens, the two
    attention matmuls with their square, the patch embedding with all ``patches`` patches."""
    blocks, skips, hidden = 2 * (depth // 2) + 1, depth // 2, int(width * mlp_ratio)
    per_token = (
        blocks * (2 * width * 3 * width + 2 * width * width + 2 * 2 * width * hidden)  # qkv, proj, MLP
        + skips * 2 * 2 * width * width  # long skips, Linear(2D, D)
        + 2 * width * patch**2 * chans
    )  # head
    per_token_pair = blocks * 2 * 2 * width  # Q K^T and softmax(.) V
    embed = 2 * patches * width * chans * patch**2
    return embed + per_token * tokens + per_token_pair * tokens**2


def test_celeba64_masked_to_full_training_ratio_is_the_closed_form():
    cfg = MODEL_PRESETS["maskdm-celeba64"]
    n, k = cfg.num_patches, PatchMask(0.9).keep_count(cfg.grid)
    assert (n, k) == (256, 26)
    shape = {"width": 512, "depth": 13, "mlp_ratio": 4.0, "patch": 4, "chans": 3, "patches": 256}
    expected = Fraction(closed_form_forward(**shape, tokens=1 + k), closed_form_forward(**shape, tokens=1 + n))
    measured = Fraction(train_flops_per_image(cfg, k), train_flops_per_image(cfg, n))
    assert measured == expected
    assert float(expected) == pytest.approx(0.098749, abs=1e-6)  # 10.1x fewer FLOPs per image at 90%


@pytest.mark.parametrize("mask", [PatchMask(0.9), PatchMask(0.5), BlockMask(0.9, 4)])
def test_the_plan_estimate_is_the_exact_training_count(mask):
    cfg = MODEL_PRESETS["maskdm-celeba64"]
    rate = effective_mask_rate(mask, cfg.grid)
    assert flops_per_image(cfg, rate) == train_flops_per_image(cfg, mask.keep_count(cfg.grid))


def test_sampling_runs_the_network_on_all_patches_once_per_step():
    cfg = MODEL_PRESETS["uvit-digits"]
    assert eval_flops_per_image(cfg, 50) == 50 * forward_flops(cfg, cfg.num_patches)
    with pytest.raises(ValueError):
        forward_flops(cfg, cfg.num_patches + 1)
    with pytest.raises(ValueError):
        forward_flops(CONFIGS["tiny+time_mlp+final_conv"], 7)
