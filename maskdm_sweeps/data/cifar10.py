"""CIFAR-10 from the standard python-pickle files (``cifar-10-batches-py/``): 50k train / 10k test, 32x32 RGB.

Each batch file is a pickled dict with ``b"data"``: ``(n, 3072)`` uint8 rows holding the red, green and blue
planes one after another (CHW order, each plane row-major), and ``b"labels"``. Nothing is downloaded unless asked.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import DataError, Problems

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch


BATCHES_DIRNAME = "cifar-10-batches-py"
"""The folder the official archive (and torchvision) extracts to."""

NATIVE_SIZE = 32


def _train_number(name: str) -> int | None:
    match = re.fullmatch(r"data_batch_(\d+)", name)
    return int(match.group(1)) if match else None


def batch_files(batches_dir: Path, split: str) -> list[Path]:
    """The batch files of ``split`` present in ``batches_dir``, in order (``data_batch_1..5`` or ``test_batch``).

    Takes whichever ``data_batch_*`` exist rather than insisting on all five, so a trimmed copy still loads.
    """
    if not batches_dir.is_dir():
        return []
    if split == "test":
        return [f for f in [batches_dir / "test_batch"] if f.is_file()]
    numbered = [(_train_number(f.name), f) for f in batches_dir.iterdir() if f.is_file()]
    return [f for n, f in sorted((n, f) for n, f in numbered if n is not None)]


def find_batches_dir(path: Path, split: str) -> Path | None:
    """``path`` itself or ``path/cifar-10-batches-py``, whichever holds batch files of ``split``; None if neither."""
    for candidate in (path, path / BATCHES_DIRNAME):
        if batch_files(candidate, split):
            return candidate
    return None


def download_cifar10(root: Path) -> Path:
    """Fetch and extract the archive into ``root/cifar-10-batches-py`` with torchvision (needs internet)."""
    from torchvision.datasets import CIFAR10

    root.mkdir(parents=True, exist_ok=True)
    CIFAR10(root=str(root), train=True, download=True)
    return root / BATCHES_DIRNAME


class UnsafeBatchFile(DataError):
    """A CIFAR-10 batch file that is not what a real batch holds (it could run code when unpickled)."""


# Everything a real batch file's pickle references: numpy's array reconstruction (python 2's numpy.core and
# numpy 2's numpy._core spellings, and protocol 5's _frombuffer) and the codec python 2 bytes come back through.
# Anything else (os.system, subprocess, builtins.eval, ...) is refused before it is called.
_BATCH_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`_BATCH_GLOBALS` (dicts, lists, bytes, ints need none)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise UnsafeBatchFile(f"it references {module}.{name}, which no CIFAR-10 batch holds")
        return super().find_class(module, name)


def read_batch(file: Path) -> np.ndarray:
    """One pickled batch as uint8 ``(n, 3, 32, 32)``, unpickled with only what a real batch needs.

    Raises :class:`UnsafeBatchFile` naming the file for anything else (nothing in it is run) or for a file that is
    not a batch at all.
    """
    try:
        with open(file, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)  # (n, 3072): R plane, G plane, B plane
        if data.ndim != 2 or data.shape[1] != 3 * NATIVE_SIZE * NATIVE_SIZE:
            raise ValueError(f"its data has shape {data.shape}, not (n, {3 * NATIVE_SIZE * NATIVE_SIZE})")
    except UnsafeBatchFile as err:
        raise UnsafeBatchFile(f"refusing CIFAR-10 batch file {file}: {err}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise UnsafeBatchFile(f"{file} is not a CIFAR-10 batch file ({type(err).__name__}: {err})") from None
    return data.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)


def refused_batches(files: list[Path]) -> Problems:
    """The batch files of ``files`` that :func:`read_batch` refuses, with its message, in order: every file is
    read, since a crafted or damaged second batch would otherwise surface only when a trial loads the data."""
    problems = []
    for file in files:
        try:
            read_batch(file)
        except UnsafeBatchFile as err:
            problems.append((file, str(err)))
    return problems


def load_cifar10(
    path: Path, split: str = "train", image_size: int = NATIVE_SIZE, download: bool = False
) -> torch.Tensor:
    """CIFAR-10 ``split`` as uint8 ``(n, 3, S, S)``; ``path`` is the batches folder or the folder holding it.

    ``image_size`` other than 32 resizes bilinearly (antialiased when shrinking). ``download=True`` fetches the
    archive into ``path`` only when no batch files of ``split`` are found there.
    """
    import torch  # lazily: validating a spec reads this module's names without torch

    from .convert import resize_uint8

    batches_dir = find_batches_dir(path, split)
    if batches_dir is None and download:
        batches_dir = download_cifar10(path)
    if batches_dir is None:
        raise FileNotFoundError(f"no CIFAR-10 {split} batches in {path} or {path / BATCHES_DIRNAME}")
    images = np.concatenate([read_batch(f) for f in batch_files(batches_dir, split)])
    return resize_uint8(torch.from_numpy(images), image_size)
