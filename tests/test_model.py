"""U-ViT with token dropping: sizes of the method's models, shapes, and what dropping tokens means."""

import pytest
import torch

from maskdm_sweeps.maskdm import MODEL_PRESETS, PatchMask, UViT, UViTConfig, build_model, count_parameters, patchify


@pytest.mark.parametrize("preset, millions", [("maskdm-celeba64", 44.3), ("maskdm-b256", 102.4)])
def test_parameter_counts_match_the_paper_within_one_percent(preset, millions):
    assert count_parameters(build_model(preset)) / 1e6 == pytest.approx(millions, rel=0.01)


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_every_preset_trains_a_step_on_tiny_inputs(preset):
    cfg = MODEL_PRESETS[preset]
    model = build_model(preset, img_size=4 * cfg.patch_size)  # a 4x4 patch grid: the full width, few tokens
    x = torch.randn(2, cfg.in_chans, 4 * cfg.patch_size, 4 * cfg.patch_size)
    t = torch.tensor([0, 999])
    keep = PatchMask(rate=0.5).sample(2, 4, torch.Generator().manual_seed(0), "cpu")
    out = model(x, t, keep)
    assert out.shape == (2, 8, cfg.patch_size**2 * cfg.in_chans)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(model(x, t)).all()


def test_keeping_every_index_equals_no_mask():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([3, 500, 999])
    keep_all = torch.arange(64).expand(3, 64)
    with torch.no_grad():
        full = model(x, t)  # (B, C, H, W)
        kept = model(x, t, keep_all)  # (B, N, p*p*C)
    torch.testing.assert_close(kept, patchify(full, 2), rtol=1e-5, atol=1e-6)


def test_visible_tokens_keep_their_absolute_position():
    """The same patch content at two positions gives two predictions: positions are added before the drop."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.zeros(2, 1, 16, 16)
    t = torch.tensor([10, 10])
    keep = torch.tensor([[0], [63]])  # one visible patch, same (zero) content, different place
    with torch.no_grad():
        out = model(x, t, keep)
    assert not torch.allclose(out[0], out[1])


def test_dropped_tokens_do_not_influence_kept_ones():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([200])
    keep = torch.tensor([[0, 5, 9, 40]])
    y = x.clone()
    y[..., 8:, 8:] = 5.0  # change only patches that are not kept (rows 4-7, cols 4-7 of the grid)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, keep), model(y, t, keep))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_any_number_of_channels(channels):
    model = UViT(UViTConfig(img_size=8, patch_size=2, in_chans=channels, embed_dim=16, depth=3, num_heads=2))
    assert model(torch.randn(2, channels, 8, 8), torch.tensor([1, 2])).shape == (2, channels, 8, 8)


def test_optional_time_mlp_and_final_conv():
    base = UViTConfig(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=3, num_heads=2)
    plain = UViT(base)
    both = UViT(UViTConfig(**{**base.__dict__, "time_mlp": True, "final_conv": True}))
    extra = (16 * 64 + 64) + (64 * 16 + 16) + (9 + 1)  # two time-MLP linears, one 1->1 3x3 conv
    assert count_parameters(both) - count_parameters(plain) == extra
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([7])
    assert both(x, t).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="final_conv"):
        both(x, t, torch.tensor([[0, 1]]))


def test_unknown_preset_and_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("uvit-huge")
    with pytest.raises(ValueError, match="unknown model fields"):
        build_model("tiny", widht=3)
