"""The in-domain digits backend: the 64-d penultimate layer of a small CNN trained here on scikit-learn digits.

NOT Inception, never quote its distances as FID. The classifier trains itself in seconds on the CPU, by a fixed
recipe, and is cached on disk under a name derived from that recipe (nothing is downloaded).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.files import cache_dir
from .preprocess import batched_features, check_images, quantize_like_png

DIGITS_SIZE = 16
RECOGNISABLE_CONFIDENCE = 0.9
"""A sample is *recognisable* when the classifier puts it in one class with at least this probability."""
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


def digits_cnn_flops(with_head: bool = True) -> int:
    """FLOPs of :class:`DigitsCNN` on one image, from its shapes (2 x MACs, as ``FlopCounterMode`` counts):
    the two 3x3 convolutions at 16x16 and 8x8, the 64-d ``fc``, and with ``with_head`` the 10-way head."""
    c1, c2, d = (int(w) for w in str(DIGITS_RECIPE["widths"]).split(","))
    s = DIGITS_SIZE
    convs = 2 * s * s * c1 * 1 * 9 + 2 * (s // 2) ** 2 * c2 * c1 * 9
    fc = 2 * c2 * (s // 4) ** 2 * d
    return convs + fc + (2 * d * 10 if with_head else 0)


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
    train, test = train_test_split(
        np.arange(len(y)),
        test_size=DIGITS_RECIPE["test_fraction"],
        random_state=DIGITS_RECIPE["split_seed"],
        stratify=bunch.target,
    )
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
    flops_per_image = digits_cnn_flops(with_head=True)  # the head runs too: :meth:`confidence` of the features

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
        check_images(images)
        return batched_features(self._embed, images, self.chunk)

    @torch.no_grad()
    def confidence(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's top class probability ``(B,)`` from :meth:`features` ``(B, 64)`` (the head's input).

        A sample is recognisable as a digit when this is at least :data:`RECOGNISABLE_CONFIDENCE`.
        """
        logits = self.network.head(features.to(self.device, torch.float32))  # (B, 10)
        return logits.softmax(dim=1).amax(dim=1).double().cpu()
