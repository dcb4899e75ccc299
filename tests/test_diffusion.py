"""Diffusion: schedules, the forward process, the MDSM loss, and a contract every sampler passes."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskdm_sweeps.maskdm import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    PatchMask,
    add_noise,
    cosine_schedule,
    linear_schedule,
    mdsm_loss,
    sample_images,
)


def test_linear_schedule_endpoints_in_float64():
    s = linear_schedule()
    assert s.betas.dtype == torch.float64 and s.num_timesteps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[-1].item() == pytest.approx(math.prod(1 - b for b in s.betas.tolist()), rel=1e-9)


def test_cosine_schedule_follows_nichol_dhariwal():
    s = cosine_schedule()
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-6)
    assert s.betas.max().item() == pytest.approx(0.999)  # clipped at the end
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])


def test_schedule_round_trips_through_a_state_dict():
    s = cosine_schedule()
    back = NoiseSchedule.from_state_dict(s.state_dict())
    assert back.name == "cosine" and torch.equal(back.betas, s.betas)


def test_add_noise_has_the_closed_form_moments():
    s = linear_schedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 2, 2), 0.7)
    for t_val in (0, 250, 999):
        t = torch.full((20000,), t_val)
        xt = add_noise(x0, torch.randn(x0.shape, generator=gen), t, s)
        abar = s.alphas_cumprod[t_val].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.03, abs=1e-4)


def test_loss_on_a_fully_visible_mask_is_plain_eps_mse():
    torch.manual_seed(0)
    pred_img, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    plain = F.mse_loss(pred_img, noise)
    keep_all = torch.arange(16).expand(4, 16)
    from maskdm_sweeps.maskdm import patchify

    assert mdsm_loss(pred_img, noise, 2).item() == pytest.approx(plain.item(), rel=1e-6)
    assert mdsm_loss(patchify(pred_img, 2), noise, 2, keep_all).item() == pytest.approx(plain.item(), rel=1e-6)


def test_masked_loss_counts_only_visible_pixels_per_sample():
    """Independent computation: a pixel mask built from the keep-indices, per-sample mean, then batch mean."""
    torch.manual_seed(1)
    p, grid = 2, 4
    noise = torch.randn(3, 1, 8, 8)
    full_pred = torch.randn(3, 1, 8, 8)
    keep = PatchMask(rate=0.75).sample(3, grid, torch.Generator().manual_seed(0), "cpu")  # (3, 4)
    from maskdm_sweeps.maskdm import gather_tokens, patchify

    loss = mdsm_loss(gather_tokens(patchify(full_pred, p), keep), noise, p, keep)
    per_sample = []
    for b in range(3):
        visible = torch.zeros(8, 8, dtype=torch.bool)
        for idx in keep[b].tolist():
            r, c = divmod(idx, grid)
            visible[r * p : (r + 1) * p, c * p : (c + 1) * p] = True
        per_sample.append(((full_pred[b, 0] - noise[b, 0]) ** 2)[visible].mean())
    assert loss.item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-6)


# ---------------------------------------------------------------- samplers
def make(name, **kw):
    return SAMPLERS[name](linear_schedule(), **kw)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1000, 50, 7])
def test_sampler_contract(name, steps):
    sampler = make(name)
    sampler.set_timesteps(steps)
    ts = sampler.timesteps
    assert len(ts) == steps and ts[-1] == 0 and torch.all(ts[:-1] > ts[1:]) and ts[0] < 1000
    x = torch.randn(2, 1, 4, 4)
    out = sampler.step(torch.zeros_like(x), int(ts[0]), x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()


def oracle_denoiser(target: torch.Tensor, schedule):
    """The exact eps for data that is a point mass at ``target``: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    abar = schedule.alphas_cumprod.float()

    def eps(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    return eps


@pytest.mark.parametrize(
    "sampler, steps",
    [(DDPMSampler(linear_schedule()), 1000), (DDIMSampler(linear_schedule(), eta=0.0), 50),
     (DDIMSampler(linear_schedule(), eta=1.0), 250), (DDIMSampler(cosine_schedule(), eta=0.5), 100)],
    ids=["ddpm-1000", "ddim-50-eta0", "ddim-250-eta1", "ddim-100-cosine"],
)
def test_samplers_recover_a_point_mass_with_the_exact_denoiser(sampler, steps):
    target = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    sampler.set_timesteps(steps)
    out = sample_images(oracle_denoiser(target, sampler.schedule), sampler, (3, 1, 4, 4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target.expand(3, 1, 4, 4), atol=2e-3, rtol=0)


def test_ddim_with_eta_zero_is_deterministic():
    sampler = DDIMSampler(linear_schedule(), eta=0.0)
    sampler.set_timesteps(20)
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4)
    a = sampler.step(eps, 500, x, generator=torch.Generator().manual_seed(0))
    b = sampler.step(eps, 500, x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_ddim_over_every_step_with_eta_one_is_the_ddpm_posterior():
    ddim, ddpm = DDIMSampler(linear_schedule(), eta=1.0, clip_sample=False), DDPMSampler(linear_schedule(), clip_sample=False)
    ddim.set_timesteps(1000)
    ddpm.set_timesteps(1000)
    for t in (1, 10, 500, 999):
        assert ddim.sigma(t) ** 2 == pytest.approx(ddpm.posterior_variance(t), rel=1e-9)
    x, eps = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for t in (5, 400, 999):
        a = ddim.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        b = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
