"""Discrete DDPM diffusion for MaskDM: noise schedules, ``add_noise``, the MDSM/DSM loss, and samplers.

Notation follows Ho et al. (2020): ``beta_t``, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``, timesteps
``t in {0, ..., T-1}``. The network predicts ``eps`` and never sees the schedule; samplers have the diffusers shape
(``set_timesteps``, ``timesteps``, ``step(model_output, t, sample)``) so that one loop drives any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .patches import gather_tokens, patchify


# --------------------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class NoiseSchedule:
    """A beta schedule in float64; derived quantities are properties so the schedule is one tensor to store."""

    betas: torch.Tensor  # (T,) float64
    name: str = "custom"

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``abar_t``, (T,) float64."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def state_dict(self) -> dict:
        """Plain tensors and strings, loadable with ``torch.load(weights_only=True)``."""
        return {"name": self.name, "betas": self.betas.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> NoiseSchedule:
        return cls(betas=state["betas"].to(torch.float64), name=state["name"])


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM's linear betas (Ho et al. 2020), used by MaskDM for CelebA 64 and LSUN church."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return NoiseSchedule(betas=betas, name="linear")


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal (2021) eq. 17: ``abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2)``, betas clipped at max_beta."""

    def abar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta) for i in range(num_timesteps)]
    return NoiseSchedule(betas=torch.tensor(betas, dtype=torch.float64), name="cosine")


SCHEDULES: dict[str, Callable[..., NoiseSchedule]] = {"linear": linear_schedule, "cosine": cosine_schedule}
"""Registry: the ``diffusion.schedule`` names a spec may use."""


def build_schedule(name: str, num_timesteps: int = 1000) -> NoiseSchedule:
    try:
        return SCHEDULES[name](num_timesteps)
    except KeyError:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None


def _per_sample(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Look up ``values[t]`` and shape it ``(B, 1, 1, ...)`` to broadcast over ``like``, in ``like``'s dtype."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------------------- forward process
def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Sample ``q(x_t | x_0)`` (Ho et al. eq. 4): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.

    x0, noise: (B, C, H, W); t: (B,) int64 in [0, T). Returns (B, C, H, W).
    """
    abar = _per_sample(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def mdsm_loss(
    eps_pred: torch.Tensor, noise: torch.Tensor, patch_size: int, keep_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked denoising score matching (MaskDM's L_mdsm): eps-MSE on the visible patches only.

    eps_pred: (B, K, p*p*C) per-patch predictions in keep-index order, or (B, C, H, W) when nothing is masked.
    noise: (B, C, H, W) the eps that made x_t. keep_idx: (B, K) or None (all patches: plain DSM, Ho et al. eq. 14).
    The mean is taken per sample over its visible elements, then over the batch; no timestep weighting.
    """
    target = patchify(noise, patch_size)  # (B, N, p*p*C)
    if keep_idx is not None:
        target = gather_tokens(target, keep_idx)  # (B, K, p*p*C)
    if eps_pred.dim() == 4:
        eps_pred = patchify(eps_pred, patch_size)
    per_sample = (eps_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return per_sample.mean()


# --------------------------------------------------------------------------------------------------- samplers
class Sampler(Protocol):
    """The diffusers-like contract every sampler honours."""

    timesteps: torch.Tensor

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def step(
        self, model_output: torch.Tensor, t: int, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


class _ScheduleSampler:
    """Shared state: the schedule as float64 tables and the x0 prediction from eps."""

    def __init__(self, schedule: NoiseSchedule, clip_sample: bool = True):
        self.schedule = schedule
        self.clip_sample = clip_sample
        self.betas = schedule.betas
        self.alphas_cumprod = schedule.alphas_cumprod
        self.num_train_timesteps = schedule.num_timesteps
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1)

    def _abar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def _predict_x0(self, eps: torch.Tensor, t: int, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 from eps (Ho et al. eq. 15), optionally clipped to [-1, 1], and eps recomputed from the clipped x0.

        DDPM uses only x0; DDIM uses the recomputed eps or the raw one (its ``eps_after_clip``).
        """
        abar = self._abar(t)
        x0 = (sample - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        if self.clip_sample:
            x0 = x0.clamp(-1, 1)
            eps = (sample - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        return x0, eps

    @staticmethod
    def _noise_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)


class DDPMSampler(_ScheduleSampler):
    """Ancestral sampling of ``p(x_{t-1} | x_t)`` with the posterior variance ``beta_tilde_t`` (Ho et al. eq. 6-7).

    ``set_timesteps(k)`` with ``k < T`` strides over the schedule (the DDPM posterior of the strided chain).
    """

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        k = num_inference_steps or self.num_train_timesteps
        stride = self.num_train_timesteps // k
        self.timesteps = torch.arange(k - 1, -1, -1) * stride

    def _prev(self, t: int) -> int:
        stride = self.num_train_timesteps // len(self.timesteps)
        return t - stride

    def posterior_variance(self, t: int) -> float:
        """``beta_tilde = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)``."""
        abar, abar_prev = self._abar(t), self._abar(self._prev(t))
        return (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)

    def step(self, model_output, t, sample, generator=None):
        t = int(t)
        abar, abar_prev = self._abar(t), self._abar(self._prev(t))
        beta = 1 - abar / abar_prev
        x0, _ = self._predict_x0(model_output, t, sample)
        # posterior mean (Ho et al. eq. 7)
        mean = (math.sqrt(abar_prev) * beta / (1 - abar)) * x0 + (
            math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        ) * sample
        if t == 0 or self._prev(t) < 0:
            return mean
        return mean + math.sqrt(self.posterior_variance(t)) * self._noise_like(sample, generator)


TIMESTEP_SPACINGS = ("trailing", "leading")
EPS_AFTER_CLIP = ("raw", "recomputed")


class DDIMSampler(_ScheduleSampler):
    """DDIM (Song et al. 2021, eq. 12) with any step count and ``eta``; eta=1 over every step is DDPM.

    ``sigma_t(eta) = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)`` (eq. 16), where
    ``prev`` is the next timestep of this sampler's own list (``-1``, with ``abar = 1``, after the last one).

    ``spacing`` picks the ``k`` timesteps out of ``T``:

    - ``"trailing"`` (default; the official MaskDM evaluation): ``torch.linspace(-1, T - 1, k + 1)`` in float32, cast
      to int (truncation toward zero, so ``-1`` stays ``-1``), reversed; the ``-1`` is not a step but the previous
      timestep of the last one. T = 1000, k = 250: 999, 995, ..., 3. The gaps are ``T / k`` rounded down or up, so
      they differ by one when ``k`` does not divide ``T`` (k = 3: 999, 665, 332, gaps 334, 333, 333).
    - ``"leading"`` (diffusers' default): ``t_i = i * (T // k)``, i.e. 996, ..., 0 for T = 1000, k = 250.

    ``eps_after_clip`` decides the ``eps`` of the direction term once ``x0`` has been clipped to [-1, 1]: ``"raw"``
    (default; the official MaskDM evaluation) keeps the network's output, ``"recomputed"`` derives it again from the
    clipped ``x0`` and ``x_t``. The two agree whenever clipping changes nothing (or ``clip_sample=False``).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        eta: float = 0.0,
        clip_sample: bool = True,
        spacing: str = "trailing",
        eps_after_clip: str = "raw",
    ):
        super().__init__(schedule, clip_sample)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
        if eps_after_clip not in EPS_AFTER_CLIP:
            raise ValueError(f"eps_after_clip must be one of {EPS_AFTER_CLIP}, got {eps_after_clip!r}")
        self.eta = eta
        self.spacing = spacing
        self.eps_after_clip = eps_after_clip
        self.set_timesteps(self.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        k, T = num_inference_steps, self.num_train_timesteps
        if not 1 <= k <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}], got {k}")
        if self.spacing == "trailing":
            # float32 as in the official code, so the truncation lands on the same integers
            chain = torch.linspace(-1, T - 1, k + 1, dtype=torch.float32).long().flip(0)  # (k + 1,): T-1, ..., -1
        else:
            chain = torch.cat([torch.arange(k - 1, -1, -1) * (T // k), torch.tensor([-1])])
        if not torch.all(chain[:-1] > chain[1:]) or chain[-1] != -1:
            raise ValueError(f"{self.spacing} spacing of {k} steps over T = {T} gives no strictly decreasing chain")
        self.timesteps = chain[:-1]
        self._prev_of = dict(zip(chain[:-1].tolist(), chain[1:].tolist(), strict=True))

    def prev_timestep(self, t: int) -> int:
        """The timestep after ``t`` in this sampler's list; -1 (clean data, ``abar = 1``) after the last step."""
        try:
            return self._prev_of[int(t)]
        except KeyError:
            raise ValueError(f"t = {t} is not one of this sampler's timesteps (call set_timesteps first)") from None

    def sigma(self, t: int) -> float:
        abar, abar_prev = self._abar(t), self._abar(self.prev_timestep(t))
        return self.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))

    def step(self, model_output, t, sample, generator=None):
        t = int(t)
        prev_t = self.prev_timestep(t)
        x0, eps = self._predict_x0(model_output, t, sample)
        if prev_t < 0:  # the last step returns the (clipped) x0 itself, as the official loop does
            return x0
        if self.eps_after_clip == "raw":
            eps = model_output
        abar_prev = self._abar(prev_t)
        sigma = self.sigma(t)
        direction = math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        prev = math.sqrt(abar_prev) * x0 + direction
        if sigma > 0:
            prev = prev + sigma * self._noise_like(sample, generator)
        return prev


SAMPLERS: dict[str, type] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}
"""Registry: the ``eval.sampler`` names a spec may use."""


@torch.no_grad()
def sample_images(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: Sampler,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Run the reverse chain from ``N(0, I)``: ``denoiser(x_t (B,C,H,W), t (B,)) -> eps (B,C,H,W)``.

    Returns ``(B, C, H, W)`` samples, clamped to [-1, 1].
    """
    x = torch.randn(shape, generator=generator, device=device)
    for t in sampler.timesteps.tolist():
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        eps = denoiser(x, t_batch).float()
        x = sampler.step(eps, t, x, generator=generator)
    return x.clamp(-1, 1)
