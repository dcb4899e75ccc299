"""The evaluator's FID has the right value: sampling -> features -> reference statistics, checked against known models.

A denoiser that knows the training set exactly (the posterior mean of the empirical distribution) samples training
digits, so its FID must sit near the floor that real held-out digits reach under the same protocol (20 DDIM steps
stop short of the data: within 2x the floor); an untrained U-ViT and pure noise must score far above it. Protocol of
every number here: the digits-classifier features, 256 samples, DDIM with 20 steps, eta 1, trailing spacing, raw eps
after clipping (the ``tiny_trial_config`` evaluation), against the 1437 training digits.
"""

import pytest
import torch

from maskdm_sweeps.data import load_dataset
from maskdm_sweeps.data.digits import load_digits_uint8
from maskdm_sweeps.maskdm import UViT, build_schedule
from maskdm_sweeps.metrics import StatsAccumulator, frechet_distance
from maskdm_sweeps.testing import tiny_trial_config
from maskdm_sweeps.trainer.evaluation import Evaluator

NUM_SAMPLES = 256


class EmpiricalDenoiser(torch.nn.Module):
    """The exact eps-prediction for data that is uniform over ``images`` (N, C, H, W) in [-1, 1].

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, so p(x0 = x_i | x_t) is a softmax of -||x_t - sqrt(abar) x_i||^2 /
    (2 (1 - abar)), and eps_hat = (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar) (Tweedie's formula).
    """

    def __init__(self, images: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.x = images.flatten(1)  # (N, D)
        self.abar = alphas_cumprod.float()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, keep_idx=None) -> torch.Tensor:
        a = self.abar[t].view(-1, 1)  # (B, 1)
        flat = x_t.flatten(1)  # (B, D)
        sq_dist = (
            (flat * flat).sum(1, keepdim=True) - 2 * a.sqrt() * flat @ self.x.T + a * (self.x * self.x).sum(1)[None]
        )  # (B, N)
        x0 = torch.softmax(-sq_dist / (2 * (1 - a)), dim=1) @ self.x  # (B, D)
        return ((flat - a.sqrt() * x0) / (1 - a).sqrt()).view_as(x_t)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    import os

    os.environ["MASKDM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    cfg = tiny_trial_config(eval={"num_samples": NUM_SAMPLES, "batch_size": NUM_SAMPLES, "sampling_steps": 20})
    data = load_dataset(cfg.data)
    return Evaluator(cfg, data, torch.device("cpu"), None), data


def fid_of_images(evaluator: Evaluator, images: torch.Tensor) -> float:
    """FID of given images (N, C, H, W) in [-1, 1] against the evaluator's reference: an independent path."""
    backend = evaluator.backend
    assert backend is not None
    stats = StatsAccumulator(backend.dims)
    stats.update(backend.features(images))
    s, ref = stats.finalize(), evaluator.reference
    return frechet_distance(s.mean, s.cov, ref.mean, ref.cov)


def test_fid_of_a_perfect_denoiser_is_near_the_real_data_floor_and_far_below_untrained_and_noise(evaluator, tmp_path):
    ev, data = evaluator
    schedule = build_schedule("linear", 1000)
    held_out = load_digits_uint8(data.image_size, "test")[:NUM_SAMPLES].float() / 127.5 - 1  # (256, 1, 8, 8)
    floor = fid_of_images(ev, held_out)  # measured 4.6
    noise = fid_of_images(ev, torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1))
    perfect = ev.evaluate(
        EmpiricalDenoiser(data.images.float() / 127.5 - 1, schedule.alphas_cumprod), schedule, 0, tmp_path
    ).fid  # measured 6.4 (trailing DDIM spacing ends at t = 49)
    torch.manual_seed(0)
    untrained = ev.evaluate(UViT(tiny_trial_config().model_config_resolved()), schedule, 0, tmp_path).fid  # ~250
    assert perfect < 2 * floor + 2, (perfect, floor)
    assert untrained > 20 * perfect and untrained > 100, (untrained, perfect)
    assert noise > 20 * perfect and noise > 100, (noise, perfect)


def test_the_final_evaluation_adds_the_floor_the_noise_and_the_recognisable_share(evaluator, tmp_path):
    """Floor: real training digits score about what held-out ones do; noise: other sampling seeds move the FID,
    by little; recognisable: a perfect denoiser's samples are digits to the classifier, an untrained net's are not."""
    _, data = evaluator
    cfg = tiny_trial_config(
        eval={"num_samples": NUM_SAMPLES, "batch_size": NUM_SAMPLES, "sampling_steps": 20, "fid_repeats": 3}
    )
    ev = Evaluator(cfg, data, torch.device("cpu"), None)
    schedule = build_schedule("linear", 1000)
    perfect = EmpiricalDenoiser(data.images.float() / 127.5 - 1, schedule.alphas_cumprod)
    periodic = ev.evaluate(perfect, schedule, 10, tmp_path)
    final = ev.evaluate(perfect, schedule, 20, tmp_path, final=True)
    assert set(periodic.extra) == {"eval/recognisable"}  # floor and noise only at the end of a stage
    assert final.fid == periodic.fid  # the reported FID keeps the fixed evaluation noise
    held_out = load_digits_uint8(data.image_size, "test")[:NUM_SAMPLES].float() / 127.5 - 1
    # measured: held-out 4.6, the evaluator's floor (another 256 real digits) 7.5, the perfect denoiser 6.4: at 256
    # samples which real images are drawn moves FID by a few points, so real and perfect agree only to that
    floor = fid_of_images(ev, held_out)
    assert 0.3 * floor < final.extra["eval/fid_floor"] < 3 * floor and final.extra["eval/fid_floor"] < 2 * final.fid
    assert 0 < final.extra["eval/fid_noise_std"] < 0.5 * final.fid, final.extra  # measured 0.85 against 6.4
    torch.manual_seed(0)
    untrained = ev.evaluate(UViT(cfg.model_config_resolved()), schedule, 0, tmp_path)
    real = (ev.backend.confidence(ev.backend.features(held_out)) >= 0.9).double().mean().item()  # 0.96
    assert final.extra["eval/recognisable"] > 0.8 * real, final.extra
    assert untrained.extra["eval/recognisable"] < 0.7 * final.extra["eval/recognisable"], untrained.extra
