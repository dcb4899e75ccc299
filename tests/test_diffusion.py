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
SAMPLER_CONFIGS = {
    "ddpm": ("ddpm", {}),
    "ddim-trailing": ("ddim", {"spacing": "trailing"}),
    "ddim-leading": ("ddim", {"spacing": "leading"}),
}


def make(name, **kw):
    return SAMPLERS[name](linear_schedule(), **kw)


def hand_abar(t: int) -> float:
    """``abar_t`` of the linear schedule straight from its betas, and 1 at t = -1 (clean data)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return 1.0 if t < 0 else math.prod(1 - b for b in betas[: t + 1].tolist())


@pytest.mark.parametrize("config", list(SAMPLER_CONFIGS))
@pytest.mark.parametrize("steps", [1000, 50, 7])
def test_sampler_contract(config, steps):
    name, kw = SAMPLER_CONFIGS[config]
    sampler = make(name, **kw)
    sampler.set_timesteps(steps)
    ts = sampler.timesteps
    assert len(ts) == steps and ts[-1] >= 0 and torch.all(ts[:-1] > ts[1:]) and ts[0] < 1000
    x = torch.randn(2, 1, 4, 4)
    out = sampler.step(torch.zeros_like(x), int(ts[0]), x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the last step lands on clean data: with the exact eps of x0 it returns x0, with no noise added
    x0, eps = torch.rand(2, 1, 4, 4, dtype=torch.float64) - 0.5, torch.randn(2, 1, 4, 4, dtype=torch.float64)
    abar = hand_abar(int(ts[-1]))
    xt = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    torch.testing.assert_close(sampler.step(eps, int(ts[-1]), xt, generator=torch.Generator().manual_seed(0)), x0)


def test_default_ddim_timesteps_are_the_official_trailing_ones():
    sampler = DDIMSampler(linear_schedule(), eta=1.0)
    assert (sampler.spacing, sampler.eps_after_clip) == ("trailing", "raw")
    sampler.set_timesteps(250)
    official = torch.linspace(-1, 999, 251).long()  # -1, 3, 7, ..., 999: int() truncates toward zero
    assert official[0] == -1 and official[1] == 3 and official[-1] == 999
    assert sampler.timesteps.tolist() == official.flip(0)[:-1].tolist()
    assert sampler.timesteps.tolist() == list(range(999, 2, -4))  # 999, 995, ..., 3
    assert sampler.prev_timestep(999) == 995 and sampler.prev_timestep(3) == -1  # abar at -1 is 1


def test_leading_spacing_is_the_old_strided_one():
    sampler = DDIMSampler(linear_schedule(), eta=1.0, spacing="leading")
    sampler.set_timesteps(250)
    assert sampler.timesteps.tolist() == list(range(996, -1, -4))  # 996, 992, ..., 0
    assert sampler.prev_timestep(996) == 992 and sampler.prev_timestep(0) == -1


def test_trailing_gaps_are_uneven_when_the_steps_do_not_divide_T_and_the_step_follows_the_list():
    sampler = DDIMSampler(linear_schedule(), eta=1.0)
    sampler.set_timesteps(3)  # linspace(-1, 999, 4) = -1, 332.33, 665.67, 999
    assert sampler.timesteps.tolist() == [999, 665, 332]
    assert [sampler.prev_timestep(t) for t in (999, 665, 332)] == [665, 332, -1]  # gaps 334, 333, 333 (T // 3 = 333)
    x, eps = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 0.3, torch.randn(2, 1, 4, 4, dtype=torch.float64)
    abar, abar_prev = hand_abar(999), hand_abar(665)
    sigma = math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    assert sampler.sigma(999) == pytest.approx(sigma, rel=1e-9)
    assert sampler.sigma(999) != pytest.approx(
        math.sqrt((1 - hand_abar(666)) / (1 - abar) * (1 - abar / hand_abar(666))), rel=1e-9
    )  # a fixed stride of 333 would have used t = 666
    x0 = ((x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev - sigma**2) * eps + sigma * noise
    torch.testing.assert_close(sampler.step(eps, 999, x, generator=torch.Generator().manual_seed(3)), expected)


def test_eta_one_trailing_250_sigma_uses_the_real_previous_timestep():
    sampler = DDIMSampler(linear_schedule(), eta=1.0)
    sampler.set_timesteps(250)
    for t, prev in ((999, 995), (503, 499), (7, 3)):
        abar, abar_prev = hand_abar(t), hand_abar(prev)
        assert sampler.sigma(t) == pytest.approx(
            math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)), rel=1e-9
        )
    assert sampler.sigma(3) == 0.0  # the last step goes to abar = 1: no noise


def test_step_refuses_a_timestep_outside_its_list():
    sampler = DDIMSampler(linear_schedule(), eta=1.0)
    sampler.set_timesteps(250)
    with pytest.raises(ValueError, match="not one of this sampler's timesteps"):
        sampler.step(torch.zeros(1, 1, 2, 2), 996, torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_raw_eps_differs_from_recomputed_only_where_x0_is_clipped(eta):
    t, prev = 499, 495  # consecutive timesteps of the trailing 250-step chain
    abar, abar_prev = hand_abar(t), hand_abar(prev)
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    x0_true = torch.tensor([3.0, -2.5, 0.5, -0.25], dtype=torch.float64).view(1, 1, 2, 2)  # two outside [-1, 1]
    eps = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=torch.float64).view(1, 1, 2, 2)
    xt = math.sqrt(abar) * x0_true + math.sqrt(1 - abar) * eps
    x0 = torch.tensor([1.0, -1.0, 0.5, -0.25], dtype=torch.float64).view(1, 1, 2, 2)
    eps_recomputed = (xt - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    c = math.sqrt(1 - abar_prev - sigma**2)
    expected_raw = math.sqrt(abar_prev) * x0 + c * eps + sigma * noise
    expected_recomputed = math.sqrt(abar_prev) * x0 + c * eps_recomputed + sigma * noise

    out = {}
    for rule in ("raw", "recomputed"):
        sampler = DDIMSampler(linear_schedule(), eta=eta, eps_after_clip=rule)
        sampler.set_timesteps(250)
        out[rule] = sampler.step(eps, t, xt, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out["raw"], expected_raw, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["recomputed"], expected_recomputed, rtol=1e-9, atol=1e-9)
    clipped = (x0_true.abs() > 1).flatten()
    differs = ((out["raw"] - out["recomputed"]).abs() > 1e-6).flatten()
    assert differs.tolist() == clipped.tolist() == [True, True, False, False]

    # without clipping the two rules are one
    unclipped = [
        DDIMSampler(linear_schedule(), eta=eta, clip_sample=False, eps_after_clip=r) for r in ("raw", "recomputed")
    ]
    steps = []
    for sampler in unclipped:
        sampler.set_timesteps(250)
        steps.append(sampler.step(eps, t, xt, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-9, atol=1e-9)


def test_ddpm_is_ddim_eta_one_with_leading_spacing_and_recomputed_eps():
    """The DDPM sampler has no spacing or eps option: its strided chain is leading, its posterior uses clipped x0."""
    ddpm = DDPMSampler(linear_schedule())
    ddim = DDIMSampler(linear_schedule(), eta=1.0, spacing="leading", eps_after_clip="recomputed")
    ddpm.set_timesteps(50)
    ddim.set_timesteps(50)
    assert torch.equal(ddpm.timesteps, ddim.timesteps) and ddpm.timesteps.tolist() == list(range(980, -1, -20))
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 2
    eps = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for t in (980, 500, 20, 0):
        a = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        b = ddim.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_evaluation_builds_the_official_sampler_by_default_and_records_it():
    from maskdm_sweeps.metrics import FIDProtocol
    from maskdm_sweeps.trainer.config import EvalConfig
    from maskdm_sweeps.trainer.evaluation import Evaluator, build_sampler

    cfg = EvalConfig(num_samples=0)
    assert (cfg.sampler, cfg.sampling_steps, cfg.eta, cfg.timestep_spacing, cfg.eps_after_clip) == (
        "ddim",
        250,
        1.0,
        "trailing",
        "raw",
    )
    sampler = build_sampler(
        cfg.sampler, linear_schedule(), cfg.sampling_steps, cfg.eta, cfg.timestep_spacing, cfg.eps_after_clip
    )
    assert (sampler.spacing, sampler.eps_after_clip, sampler.eta) == ("trailing", "raw", 1.0)
    assert sampler.timesteps[:2].tolist() == [999, 995] and sampler.timesteps[-1] == 3
    other = EvalConfig(num_samples=0, timestep_spacing="leading", eps_after_clip="recomputed")
    sampler = build_sampler("ddim", linear_schedule(), 250, 1.0, other.timestep_spacing, other.eps_after_clip)
    assert (sampler.spacing, sampler.eps_after_clip) == ("leading", "recomputed") and sampler.timesteps[-1] == 0
    assert Evaluator.sampler_rule(cfg) == {"timestep_spacing": "trailing", "eps_after_clip": "raw"}
    assert Evaluator.sampler_rule(EvalConfig(num_samples=0, sampler="ddpm")) == {
        "timestep_spacing": "leading",
        "eps_after_clip": "recomputed",
    }
    params = FIDProtocol(
        num_samples=2,
        sampler="ddim",
        sampling_steps=250,
        eta=1.0,
        weights="ema",
        reference="x",
        backend="inception",
        **Evaluator.sampler_rule(other),
    ).as_params()
    assert params["fid_timestep_spacing"] == "leading" and params["fid_eps_after_clip"] == "recomputed"


def oracle_denoiser(target: torch.Tensor, schedule):
    """The exact eps for data that is a point mass at ``target``: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    abar = schedule.alphas_cumprod.float()

    def eps(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    return eps


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize(
    "make_sampler, steps",
    [
        (lambda sp: DDPMSampler(linear_schedule()), 1000),
        (lambda sp: DDIMSampler(linear_schedule(), 0.0, spacing=sp), 50),
        (lambda sp: DDIMSampler(linear_schedule(), 1.0, spacing=sp), 250),
        (lambda sp: DDIMSampler(cosine_schedule(), 0.5, spacing=sp), 100),
    ],
    ids=["ddpm-1000", "ddim-50-eta0", "ddim-250-eta1", "ddim-100-cosine"],
)
def test_samplers_recover_a_point_mass_with_the_exact_denoiser(make_sampler, steps, spacing):
    sampler = make_sampler(spacing)
    target = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    sampler.set_timesteps(steps)
    out = sample_images(
        oracle_denoiser(target, sampler.schedule), sampler, (3, 1, 4, 4), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, target.expand(3, 1, 4, 4), atol=2e-3, rtol=0)


def test_ddim_with_eta_zero_is_deterministic():
    sampler = DDIMSampler(linear_schedule(), eta=0.0)
    sampler.set_timesteps(20)
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4)
    t = int(sampler.timesteps[10])
    a = sampler.step(eps, t, x, generator=torch.Generator().manual_seed(0))
    b = sampler.step(eps, t, x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_ddim_over_every_step_with_eta_one_is_the_ddpm_posterior():
    ddim, ddpm = (
        DDIMSampler(linear_schedule(), eta=1.0, clip_sample=False),
        DDPMSampler(linear_schedule(), clip_sample=False),
    )
    ddim.set_timesteps(1000)
    ddpm.set_timesteps(1000)
    for t in (1, 10, 500, 999):
        assert ddim.sigma(t) ** 2 == pytest.approx(ddpm.posterior_variance(t), rel=1e-9)
    x, eps = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for t in (5, 400, 999):
        a = ddim.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        b = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
