"""The masking strategies that followed MaskDM: MaskDiT's decoder and MAE term, deferred masking's patch-mixer, token
routing, SPRINT's sparse-dense residual fusion. Each one's output contract, its loss against an independent
computation, which positions it sees, its FLOPs against ``FlopCounterMode``, that a tiny model learns with it on the
CPU, and its names in results."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskdm_sweeps.maskdm import (
    MODEL_PRESETS,
    DeferredMasking,
    MaskDiT,
    PatchMask,
    Sprint,
    TokenRouting,
    UViT,
    forward_flops,
    gather_tokens,
    maskdit_loss,
    mdsm_loss,
    network_overrides,
    patchify,
    token_counts,
    training_loss,
)
from maskdm_sweeps.testing import TINY_NETWORK_STRATEGIES, flop_counter_cpu_attention, tiny_trial_config
from maskdm_sweeps.trainer import JsonlReporter, fit, read_jsonl_metrics

BASE = replace(MODEL_PRESETS["uvit-digits"], img_size=8)  # 4 x 4 patches of 2 x 2, depth 5: 2 in-blocks
B = 3
STRATEGY_OF = {
    "patch": PatchMask(0.5),
    "maskdit": MaskDiT(0.5, decoder_depth=2, mae_coef=0.1),
    "deferred": DeferredMasking(0.75, mixer_depth=2),
    "routing": TokenRouting(0.5, route_from=1),
    "sprint": Sprint(0.75, encoder_depth=2, decoder_depth=2),
}


def network(name: str, seed: int = 0) -> UViT:
    torch.manual_seed(seed)
    return UViT(replace(BASE, **network_overrides(STRATEGY_OF[name]))).eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    keep = STRATEGY_OF["patch"].sample(B, 4, g)  # (B, 8): half of the 16 patches
    return x, t, keep


def keep_of(name: str, seed: int = 2) -> torch.Tensor:
    return STRATEGY_OF[name].sample(B, 4, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ output contract
@pytest.mark.parametrize(
    "name, shape",
    [
        ("patch", (B, 8, 4)),
        ("maskdit", (B, 16, 4)),
        ("deferred", (B, 4, 4)),
        ("routing", (B, 1, 8, 8)),
        ("sprint", (B, 16, 4)),
    ],
)
def test_each_strategy_predicts_where_its_loss_looks_and_samples_whole_images(name, shape):
    model, (x, t, _) = network(name), batch()
    keep = keep_of(name)
    with torch.no_grad():
        out = model(x, t, route_idx=keep) if name == "routing" else model(x, t, keep)
        assert out.shape == shape  # MDSM, deferred: the kept patches; MaskDiT, SPRINT: every position; routing: image
        assert model(x, t).shape == (B, 1, 8, 8)  # sampling and fine-tuning: nothing masked, whole images


def test_added_parts_are_parameters_of_the_network_and_routing_adds_none():
    count = {name: sum(p.numel() for p in network(name).parameters()) for name in STRATEGY_OF}
    block = sum(p.numel() for p in network("patch").mid_block.parameters())
    assert count["routing"] == count["patch"]
    assert count["deferred"] == count["patch"] + 2 * block
    assert count["maskdit"] == count["patch"] + 2 * block + 64 + 17 * 64  # blocks, mask token, decoder positions
    assert count["sprint"] == count["patch"] + 4 * block + 2 * 64 * 64 + 64  # encoder, decoder, fusion Linear(2D, D)
    assert "fusion_mask_token" in dict(network("sprint").named_buffers())  # SPRINT's mask token is not trained


# ------------------------------------------------------------------------------------------------ MaskDiT's loss
def test_the_mae_term_scores_the_masked_patches_against_the_noisy_input_normalised_per_patch():
    g = torch.Generator().manual_seed(3)
    pred, noise, x_t = (
        torch.randn(B, 16, 4, generator=g),
        torch.randn(B, 1, 8, 8, generator=g),
        torch.randn(B, 1, 8, 8, generator=g),
    )
    keep = keep_of("maskdit")
    # independently, patch by patch in numpy
    p_noise, p_xt, pred_np = patchify(noise, 2).numpy(), patchify(x_t, 2).numpy(), pred.numpy()
    expected = []
    for i in range(B):
        visible = set(keep[i].tolist())
        dsm = np.mean([np.mean((pred_np[i, j] - p_noise[i, j]) ** 2) for j in visible])
        mae = []
        for j in sorted(set(range(16)) - visible):
            target = (p_xt[i, j] - p_xt[i, j].mean()) / np.sqrt(p_xt[i, j].var(ddof=1) + 1e-6)
            mae.append(np.mean((pred_np[i, j] - target) ** 2))
        expected.append(dsm + 0.1 * np.mean(mae))
    assert maskdit_loss(pred, noise, x_t, keep, 2, 0.1).item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_with_weight_zero_the_maskdit_loss_is_maskdms_on_the_visible_patches():
    g = torch.Generator().manual_seed(4)
    pred, noise, x_t = (
        torch.randn(B, 16, 4, generator=g),
        torch.randn(B, 1, 8, 8, generator=g),
        torch.randn(B, 1, 8, 8, generator=g),
    )
    keep = keep_of("maskdit")
    mdsm = mdsm_loss(gather_tokens(pred, keep), noise, 2, keep)
    assert maskdit_loss(pred, noise, x_t, keep, 2, 0.0).item() == pytest.approx(mdsm.item(), rel=1e-6)
    # and the MAE term reads the masked positions only: changing the visible predictions moves the DSM term alone
    moved = pred.clone()
    moved.scatter_(1, keep[..., None].expand(-1, -1, 4), 0.0)
    delta = maskdit_loss(moved, noise, x_t, keep, 2, 0.1) - maskdit_loss(pred, noise, x_t, keep, 2, 0.1)
    delta0 = maskdit_loss(moved, noise, x_t, keep, 2, 0.0) - maskdit_loss(pred, noise, x_t, keep, 2, 0.0)
    assert delta.item() == pytest.approx(delta0.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ who sees what
def changed_patches(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return set(torch.nonzero((a - b).abs().amax(dim=(0, 2)) > 1e-6).flatten().tolist())


def test_the_mixer_sees_every_patch_before_the_drop():
    x, t, _ = batch()
    keep = keep_of("deferred")[:1].expand(B, -1)  # one mask for the whole batch
    dropped = sorted(set(range(16)) - set(keep[0].tolist()))[0]
    other = x.clone()
    row, col = divmod(dropped, 4)
    other[:, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] += 1.0  # change a dropped patch only
    with torch.no_grad():
        mixed, plain = network("deferred"), network("patch")
        # every kept output moves with the dropped patch: the mixer carried it over before the drop ...
        assert changed_patches(mixed(x, t, keep), mixed(other, t, keep)) == set(range(4))
        # ... while MaskDM's U-ViT, dropping the same patches, never sees it
        assert torch.equal(plain(x, t, keep), plain(other, t, keep))


def test_the_decoder_predicts_every_position_from_the_visible_patches_and_the_mask_token():
    x, t, _ = batch()
    keep = keep_of("maskdit")[:1].expand(B, -1)
    visible = keep[0].tolist()
    masked = sorted(set(range(16)) - set(visible))
    model = network("maskdit")

    def with_patch_changed(j: int) -> torch.Tensor:
        other = x.clone()
        row, col = divmod(j, 4)
        other[:, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] += 1.0
        return other

    with torch.no_grad():
        out = model(x, t, keep)
        # a visible patch reaches every position, the masked ones included (the decoder attends over all of them)
        assert changed_patches(out, model(with_patch_changed(visible[0]), t, keep)) == set(range(16))
        # a masked patch's pixels reach nothing: its position holds the mask token
        assert torch.equal(out, model(with_patch_changed(masked[0]), t, keep))
        # what the decoder gets: the backbone's output at each kept position, the mask token at each dropped one,
        # every position with the decoder's own positional embedding
        seen = {}
        hooks = [
            model.out_blocks[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("backbone", out)),
            model.decoder_blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("decoder", a[0])),
        ]
        model(x, t, keep)
        for h in hooks:
            h.remove()
        pos = model.decoder_pos_embed[0]  # (1 + N, D)
        dec, enc = seen["decoder"], seen["backbone"]  # (B, 1 + N, D), (B, 1 + K, D)
        assert torch.allclose(dec[:, 0], enc[:, 0] + pos[0])  # the time token
        for k, j in enumerate(visible):
            assert torch.allclose(dec[:, 1 + j], enc[:, 1 + k] + pos[1 + j])
        for j in masked:
            assert torch.allclose(dec[:, 1 + j], (model.mask_token[0, 0] + pos[1 + j]).expand(B, -1))
        # the mask token is what fills the dropped positions (a random change: LayerNorm removes a constant shift)
        model.mask_token.add_(torch.randn(model.mask_token.shape, generator=torch.Generator().manual_seed(5)))
        assert changed_patches(out, model(x, t, keep)) == set(range(16))


def test_routed_tokens_do_not_depend_on_the_blocks_they_skip():
    torch.manual_seed(0)
    model = UViT(replace(BASE, route_from=0)).eval()  # the span is every block: routed tokens skip them all
    x, t, _ = batch()
    through = keep_of("routing")[:1].expand(B, -1)  # (B, 8) go through the span
    routed = sorted(set(range(16)) - set(through[0].tolist()))
    with torch.no_grad():
        before = patchify(model(x, t, route_idx=through), 2)  # (B, 16, 4)
        for blk in [*model.in_blocks, model.mid_block, *model.out_blocks]:
            for p in blk.parameters():
                p.add_(0.05 * torch.randn_like(p))
        after = patchify(model(x, t, route_idx=through), 2)
    assert changed_patches(before, after) == set(through[0].tolist())
    assert torch.equal(before[:, routed], after[:, routed])


@pytest.mark.parametrize("route_from", [0, 1, 2])
def test_routing_every_token_through_the_span_is_the_plain_forward(route_from):
    torch.manual_seed(0)
    model = UViT(replace(BASE, route_from=route_from)).eval()
    x, t, _ = batch()
    everything = torch.arange(16).expand(B, -1)
    with torch.no_grad():
        assert torch.allclose(model(x, t, route_idx=everything), model(x, t), atol=1e-6)


def test_sprint_fuses_the_dense_encoder_into_every_position_and_runs_the_same_network_unmasked():
    model, (x, t, _) = network("sprint"), batch()
    keep = keep_of("sprint")[:1].expand(B, -1)  # (B, 4): the same kept patches for every sample
    dropped = sorted(set(range(16)) - set(keep[0].tolist()))[0]
    row, col = divmod(dropped, 4)
    changed = x.clone()
    changed[:, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] += 1.0  # a patch the backbone never sees
    with torch.no_grad():
        out, moved = model(x, t, keep), model(changed, t, keep)  # (B, 16, 4) each
        everything = torch.arange(16).expand(B, -1)
        whole = model(x, t)  # (B, 1, 8, 8)
        assert torch.allclose(model(x, t, everything), patchify(whole, 2), atol=1e-5)  # rate 0: the same network
    # the dense path carries the dropped patch to its own position (MaskDiT's decoder would see a mask token there)
    assert (out[:, dropped] - moved[:, dropped]).abs().amax() > 1e-4
    sparse_only = network("sprint")
    sparse_only.fusion.weight.data[:, 64:] = 0  # cut the dense half of the fusion
    sparse_only.mixer_blocks = torch.nn.ModuleList()  # and the encoder: the dropped patch can reach nothing
    with torch.no_grad():
        assert torch.allclose(sparse_only(x, t, keep), sparse_only(changed, t, keep), atol=1e-6)


def test_sprint_scores_every_patch():
    model, (x, t, _) = network("sprint").train(), batch()
    keep, noise = keep_of("sprint"), torch.randn_like(x)
    loss = training_loss(STRATEGY_OF["sprint"], model, x, t, noise, keep, 2)
    expected = (model(x, t, keep) - patchify(noise, 2)).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("name", list(STRATEGY_OF))
def test_training_flops_of_each_strategy_match_the_flop_counter(name):
    strategy = STRATEGY_OF[name]
    model = network(name).train()
    x, t, _ = batch()
    keep = keep_of(name)
    counts = token_counts(strategy, 4)
    with FlopCounterMode(display=False, custom_mapping=flop_counter_cpu_attention()) as counter:
        training_loss(strategy, model, x, t, torch.randn_like(x), keep, 2).backward()
    measured = counter.get_total_flops() / B
    counted = 3 * forward_flops(model.config, counts.kept, counts.span)
    assert measured == pytest.approx(counted, rel=0.02)


def test_routing_counts_the_span_on_fewer_tokens_and_the_added_parts_on_all():
    plain = forward_flops(BASE, 16)
    assert forward_flops(replace(BASE, route_from=1), 16, 8) < plain
    assert forward_flops(replace(BASE, decoder_depth=2), 8) > forward_flops(BASE, 8)
    assert forward_flops(replace(BASE, mixer_depth=2), 4) - forward_flops(BASE, 4) == forward_flops(
        replace(BASE, mixer_depth=2), 16
    ) - forward_flops(BASE, 16)  # the mixer: all tokens, always


# ------------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize(
    "mask",
    TINY_NETWORK_STRATEGIES,
    ids=[section["strategy"] for section in TINY_NETWORK_STRATEGIES],
)
def test_a_tiny_model_learns_with_each_strategy(mask, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKDM_CACHE", str(tmp_path / "cache"))
    steps = {"steps": 200, "batch_size": 64, "lr": 2e-3, "betas": (0.9, 0.999)}
    cfg = tiny_trial_config(pretrain=steps, mask=mask, runtime={"log_every_steps": 20, "checkpoint_every_steps": 1000})
    fit(cfg, "pretrain", tmp_path / "run", JsonlReporter(tmp_path / "m.jsonl"))
    losses = [v["train/loss"] for _, v in read_jsonl_metrics(tmp_path / "m.jsonl") if "train/loss" in v]
    assert len(losses) == 10
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------------------------ names in results
def old_collect_columns(mask: dict) -> dict:
    """The mask columns and arm as ``results.collect`` computed them from a trial's mask section before strategies
    named themselves (written out here, apart from the code under test)."""
    strategy = mask.get("strategy")
    rate = float(mask["rate"]) if strategy not in (None, "crop") else float("nan")
    block = mask.get("block_size") if strategy == "block" else None
    crop = mask.get("crop_size") if strategy == "crop" else None
    if strategy == "block":
        arm = f"block b={block} r={rate:g}"
    elif strategy == "crop":
        arm = f"crop c={crop}"
    else:
        arm = f"{strategy} r={rate:g}"
    return {"arm": arm, "mask_strategy": strategy, "mask_rate": rate, "mask_block_size": block, "mask_crop_size": crop}


SECTIONS = [
    {"strategy": "patch", "rate": 0.5},
    {"strategy": "patch", "rate": 0.0},
    {"strategy": "block", "rate": 0.9, "block_size": 4},
    {"strategy": "crop", "crop_size": 11},
    {"strategy": "maskdit", "rate": 0.5, "decoder_depth": 2, "mae_coef": 0.1},
    {"strategy": "deferred", "rate": 0.75, "mixer_depth": 2},
    {"strategy": "routing", "rate": 0.5, "route_from": 1},
    {"strategy": "sprint", "rate": 0.75, "encoder_depth": 2, "decoder_depth": 2},
]


@pytest.mark.parametrize("section", SECTIONS, ids=[f"{s['strategy']}{s.get('rate', '')}" for s in SECTIONS])
def test_each_strategy_names_its_arm_and_fills_its_mask_columns_as_results_always_did(section):
    from maskdm_sweeps.maskdm import build_strategy, strategy_from_columns
    from maskdm_sweeps.results.columns import TRIAL_COLUMNS, arm_name, typed_frame

    strategy = build_strategy(**section)
    expected = old_collect_columns(section)
    columns = strategy.mask_columns()
    assert strategy.arm() == expected["arm"] == arm_name(*columns.values())
    assert {"arm": strategy.arm(), **columns} == pytest.approx(expected, nan_ok=True)
    assert strategy_from_columns(columns) == strategy.model_copy(update=dict(section))
    dtypes = {k: TRIAL_COLUMNS[k] for k in ("arm", *columns)}  # the dtypes of trials.parquet
    assert typed_frame([{"arm": strategy.arm(), **columns}], dtypes).equals(typed_frame([expected], dtypes))


def test_the_baseline_has_no_mask_columns():
    from maskdm_sweeps.maskdm import BASELINE_MASK_COLUMNS
    from maskdm_sweeps.results.columns import arm_name

    assert arm_name(*BASELINE_MASK_COLUMNS.values()) == "baseline"
    assert BASELINE_MASK_COLUMNS["mask_strategy"] is None and BASELINE_MASK_COLUMNS["mask_rate"] != 0.0
