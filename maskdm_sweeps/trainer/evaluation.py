"""Periodic evaluation of a stage: samples from the reverse process, a PNG grid, and FID with its protocol."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from ..layout import step_file
from ..maskdm import SAMPLERS, NoiseSchedule, UViT, sample_images
from ..metrics import (
    RECOGNISABLE_CONFIDENCE,
    FeatureStats,
    FIDProtocol,
    StatsAccumulator,
    build_fid_backend,
    frechet_distance,
    reference_stats,
)

EVAL_NOISE_SEED = 20_231_109  # the same starting noise at every evaluation: curves compare weights, not luck


@dataclass(frozen=True)
class EvalOutcome:
    step: int
    fid: float | None
    grid_path: Path
    extra: dict[str, float] = field(default_factory=dict)  # more eval/* metrics: recognisable, floor, noise


def save_image_grid(images: torch.Tensor, path: Path, nrow: int = 8, upscale: int = 1) -> Path:
    """Write ``(B, C, H, W)`` images in [-1, 1] as one PNG grid (nearest-neighbour ``upscale`` for tiny images)."""
    from torchvision.utils import save_image

    images = images.detach().float().cpu()
    if upscale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=upscale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)
    return path


def build_sampler(
    name: str,
    schedule: NoiseSchedule,
    steps: int,
    eta: float,
    timestep_spacing: str = "trailing",
    eps_after_clip: str = "raw",
):
    """The ``eval.sampler`` over ``steps`` timesteps; ``eta``, the spacing and the eps rule apply to DDIM only."""
    if name == "ddim":
        sampler = SAMPLERS[name](schedule, eta=eta, spacing=timestep_spacing, eps_after_clip=eps_after_clip)
    else:
        sampler = SAMPLERS[name](schedule)
    sampler.set_timesteps(steps)
    return sampler


class Evaluator:
    """Draws ``max(num_samples, grid_size)`` samples per evaluation; FID against the training images' statistics.

    With ``runtime.compile`` the denoiser is compiled too (once per network object, static shapes: the sampling batch
    is fixed), so a 10k-sample FID runs the compiled, autocast model. ``compile_backend`` is torch.compile's backend
    (tests pass "eager" to check the wiring without inductor's minutes of C++ compilation on a CPU).
    """

    def __init__(
        self, config, data, device: torch.device, amp_dtype: torch.dtype | None, compile_backend: str = "inductor"
    ):
        self.cfg, self.data, self.device, self.amp_dtype = config.eval, data, device, amp_dtype
        self.compile_mode = config.runtime.compile_mode if config.runtime.compile else None
        self.compile_backend = compile_backend
        self._compiled: tuple[UViT, torch.nn.Module] | None = None  # (network, its compiled forward)
        self.shape = (data.channels, data.image_size, data.image_size)
        self.backend = (
            build_fid_backend(self.cfg.backend, self.cfg.fid_weights, device) if self.cfg.num_samples else None
        )
        self._reference: FeatureStats | None = None
        self._floor: float | None = None
        self.protocol = (
            None
            if self.backend is None
            else FIDProtocol(
                num_samples=self.cfg.num_samples,
                sampler=self.cfg.sampler,
                sampling_steps=self.cfg.sampling_steps,
                eta=self.cfg.eta if self.cfg.sampler == "ddim" else 1.0,
                weights=self.cfg.weights,
                reference=f"{data.name}:{data.key}",
                backend=self.cfg.backend,
                **self.sampler_rule(self.cfg),
            )
        )

    @staticmethod
    def sampler_rule(cfg) -> dict[str, str]:
        """The timestep spacing and eps-after-clip rule the protocol records.

        DDIM follows ``eval``; the DDPM sampler ignores both settings: its strided chain is leading-spaced and its
        posterior mean from the clipped x0 is DDIM's eta-1 step with eps recomputed, so that is what is recorded
        (as its ``eta`` is recorded as 1).
        """
        if cfg.sampler != "ddim":
            return {"timestep_spacing": "leading", "eps_after_clip": "recomputed"}
        return {"timestep_spacing": cfg.timestep_spacing, "eps_after_clip": cfg.eps_after_clip}

    @property
    def reference(self):
        if self._reference is None:  # computed once per dataset and backend, cached on disk across trials
            assert self.backend is not None  # asked for only when scoring
            self._reference = reference_stats(self.data.images, self.data.key, self.backend)
        return self._reference

    def compiled(self, net: UViT) -> torch.nn.Module:
        """``net``'s forward as sampling runs it: compiled once per network object when compiling, else ``net``.

        The EMA network is one object whose weights change in place: the compiled graph reads them as inputs.
        """
        if self.compile_mode is None:
            return net
        if self._compiled is None or self._compiled[0] is not net:
            mode = None if self.compile_backend != "inductor" else self.compile_mode
            compiled = torch.compile(net, mode=mode, dynamic=False, backend=self.compile_backend)
            self._compiled = (net, cast(torch.nn.Module, compiled))  # a module compiles to an OptimizedModule
        return self._compiled[1]

    def _denoiser(self, net: UViT):
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        forward = self.compiled(net)

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if self.compile_mode == "reduce-overhead":  # each denoiser call is a new CUDA-graph iteration
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                return forward(x, t)

        return eps

    @torch.no_grad()
    def evaluate(
        self, net: UViT, schedule: NoiseSchedule, step: int, out_dir: Path, final: bool = False
    ) -> EvalOutcome:
        """Sample, draw the grid and score: ``eval/fid``; with the digits classifier ``eval/recognisable`` (the
        fraction of samples it puts in one class with confidence >= 0.9); at the ``final`` evaluation also
        ``eval/fid_floor`` and, with ``fid_repeats`` >= 2, ``eval/fid_noise_std``."""
        c = self.cfg
        was_training = net.training
        net.eval()
        fid, extra, grid = self._sample_and_score(net, schedule, EVAL_NOISE_SEED)
        if final and self.backend is not None:
            extra["eval/fid_floor"] = self.fid_floor()
            if c.fid_repeats > 1:
                repeats = [fid] + [
                    self._sample_and_score(net, schedule, EVAL_NOISE_SEED + k, grid=False)[0]
                    for k in range(1, c.fid_repeats)
                ]
                extra["eval/fid_noise_std"] = float(torch.tensor(repeats, dtype=torch.float64).std())
        net.train(was_training)
        assert grid is not None  # the grid's images were drawn (grid_size >= 1)
        upscale = max(1, 64 // self.shape[-1])  # digits are 16 px: draw them 4x so a person can read them
        grid_path = save_image_grid(grid, Path(out_dir) / step_file(step, ".png"), upscale=upscale)
        return EvalOutcome(step=step, fid=fid, grid_path=grid_path, extra=extra)

    def _sample_and_score(
        self, net: UViT, schedule: NoiseSchedule, noise_seed: int, grid: bool = True
    ) -> tuple[float | None, dict[str, float], torch.Tensor | None]:
        """``(fid, extra metrics, grid images)`` of one sampling pass from the noise of ``noise_seed``."""
        c = self.cfg
        sampler = build_sampler(c.sampler, schedule, c.sampling_steps, c.eta, c.timestep_spacing, c.eps_after_clip)
        gen = torch.Generator(device=self.device).manual_seed(noise_seed)
        total = max(c.num_samples, c.grid_size if grid else 0)
        backend = self.backend
        stats = StatsAccumulator(backend.dims) if backend is not None else None
        images, confident = [], []
        for start in range(0, total, c.batch_size):
            n = min(c.batch_size, total - start)
            x = sample_images(self._denoiser(net), sampler, (n, *self.shape), gen, self.device)  # (n, C, H, W)
            if grid and start < c.grid_size:
                images.append(x[: c.grid_size - start].cpu())
            if backend is not None and stats is not None and start < c.num_samples:
                features = backend.features(x[: c.num_samples - start])  # (n', dims)
                stats.update(features)
                if hasattr(backend, "confidence"):
                    confident.append(backend.confidence(features) >= RECOGNISABLE_CONFIDENCE)  # (n',)
        extra = {"eval/recognisable": torch.cat(confident).double().mean().item()} if confident else {}
        fid = None
        if stats is not None:
            sample_stats, ref = stats.finalize(), self.reference
            fid = frechet_distance(sample_stats.mean, sample_stats.cov, ref.mean, ref.cov)
        return fid, extra, torch.cat(images) if images else None

    def fid_floor(self) -> float:
        """The FID of real images under this protocol: ``num_samples`` training images (drawn without replacement
        when there are enough) against the reference statistics of all of them, with the same features. A model
        that reproduced the data distribution exactly would score about this (within the few points by which the
        choice of images moves a small-sample FID). Computed once per evaluator."""
        if self._floor is None:
            images, n = self.data.images, self.cfg.num_samples
            gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)
            index = (
                torch.randperm(images.shape[0], generator=gen)[:n]
                if n <= images.shape[0]
                else torch.randint(images.shape[0], (n,), generator=gen)
            )
            backend = self.backend
            assert backend is not None  # the floor is asked for only when scoring
            stats = StatsAccumulator(backend.dims)
            for start in range(0, n, self.cfg.batch_size):
                chunk = images[index[start : start + self.cfg.batch_size]].float() / 127.5 - 1.0  # (b, C, H, W)
                stats.update(backend.features(chunk.to(self.device)))
            real, ref = stats.finalize(), self.reference
            self._floor = frechet_distance(real.mean, real.cov, ref.mean, ref.cov)
        return self._floor
