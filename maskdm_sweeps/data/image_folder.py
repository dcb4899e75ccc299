"""A folder of image files (e.g. CelebA's ``img_align_celeba/``), cropped, resized and cached as one uint8 array.

Files are found recursively by extension and taken in sorted relative-path order, so the i-th image is the same on
every machine. Decoding 200k JPEGs takes minutes, so the result is cached under ``$MASKDM_CACHE/image_folder/``,
keyed by the file list (names, sizes, mtimes), the crop and the size: touching any file recomputes it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .files import cache_dir, content_key, file_identity

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
"""Extensions that count as images (compared case-insensitively)."""

CACHE_FORMAT = 1
"""Part of the cache key: bump it when the preprocessing changes so that old caches are not reused."""

CELEBA_ALIGNED_SIZE = (178, 218)
"""(width, height) of CelebA's aligned-and-cropped images, the only input the celeba64 preset is defined for."""

Box = tuple[int, int, int, int]
"""A PIL crop box: (left, top, right, bottom) in pixels, right and bottom exclusive."""


def center_box(width: int, height: int) -> Box:
    """The largest square centred in the image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def celeba64_box(width: int, height: int) -> Box:
    """CelebA-64 as DDIM and MaskDM prepare it: the 128x128 square centred at pixel (x=89, y=121).

    That is rows 57..185 and columns 25..153 (end exclusive) of the 178x218 aligned image, before the resize.
    Other image sizes are refused: the box only makes sense on the aligned faces.
    """
    if (width, height) != CELEBA_ALIGNED_SIZE:
        raise ValueError(f"the celeba64 crop expects 178x218 aligned CelebA images, got {width}x{height}")
    cx, cy, half = 89, 121, 64
    return cx - half, cy - half, cx + half, cy + half


CROPS: dict[str, Callable[[int, int], Box]] = {"center": center_box, "celeba64": celeba64_box}
"""Registry: the ``data.crop`` names, mapped to ``(width, height) -> crop box``."""


def iter_image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root``, recursively, in no particular order (lazy, so an emptiness check stops early)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root``, sorted by relative path: the deterministic order of the dataset."""
    return sorted(iter_image_files(root), key=lambda f: f.relative_to(root).as_posix())


def has_images(root: Path) -> bool:
    """True if at least one image file lies under ``root``."""
    return next(iter_image_files(root), None) is not None


def image_problem(file: Path) -> str | None:
    """Why ``file`` cannot be used as an image (``None`` when it opens): its header is read and its data checked
    (``Image.verify``, which does not decode the pixels), so a corrupt or truncated file, a non-image with an image
    extension, or a symlink loop is named here rather than inside a trial."""
    try:
        with Image.open(file) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError and ELOOP are OSErrors
        return f"{type(err).__name__}: {err.strerror if isinstance(err, OSError) and err.strerror else err}"
    return None


def unreadable_images(files: list[Path], workers: int | None = None) -> list[tuple[Path, str]]:
    """The files of ``files`` that :func:`image_problem` refuses, with the reason, in order (threads: I/O bound)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(image_problem, files, chunksize=256))
    return [(f, p) for f, p in zip(files, problems) if p is not None]


def readable_image_files(root: Path, skip_unreadable: bool, warn: bool = True) -> list[Path]:
    """:func:`list_image_files`, without the unreadable ones when ``skip_unreadable`` (a warning gives their
    count, unless ``warn`` is off)."""
    files = list_image_files(root)
    if not skip_unreadable:
        return files
    bad = {f for f, _ in unreadable_images(files)}
    if bad and warn:
        warnings.warn(f"skipping {len(bad)} unreadable image file(s) of {len(files)} under {root} "
                      f"(e.g. {sorted(bad)[0]})", stacklevel=2)
    return [f for f in files if f not in bad]


def preprocess_image(file: Path, image_size: int, crop: str) -> np.ndarray:
    """One file as uint8 ``(3, S, S)``: RGB, cropped with ``CROPS[crop]``, resized with antialiased bicubic."""
    with Image.open(file) as im:
        rgb = im.convert("RGB")
    try:
        box = CROPS[crop](*rgb.size)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None
    resized = rgb.crop(box).resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)


def preprocess_files(files: list[Path], image_size: int, crop: str, workers: int | None = None) -> np.ndarray:
    """All ``files`` as uint8 ``(n, 3, S, S)``, in the given order.

    Threads suffice: Pillow releases the GIL while decoding and resizing, and threads need no pickling.
    """
    out = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = preprocess_image(files[i], image_size, crop)

    workers = workers or min(8, os.cpu_count() or 1)
    if workers == 1 or len(files) < 64:
        for i in range(len(files)):
            fill(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, range(len(files)), chunksize=64))  # list(): re-raise the first error
    return out


def folder_cache_key(identity: list[tuple[str, int, int]], image_size: int, crop: str) -> str:
    """Key of the preprocessed array: the file identities, the crop, the size and the preprocessing version."""
    return content_key({"format": CACHE_FORMAT, "files": identity, "crop": crop, "image_size": image_size}, length=32)


def _save_atomic(path: Path, images: np.ndarray) -> None:
    """Write ``images`` to ``path`` via a temporary file, so concurrent trials never read a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, images)
    os.replace(tmp, path)


def load_image_folder(root: Path, image_size: int, crop: str = "center", skip_unreadable: bool = False) -> torch.Tensor:
    """Every image under ``root`` as uint8 ``(n, 3, S, S)``, from the cache when the files are unchanged
    (``skip_unreadable``: without the files that do not open, see :func:`readable_image_files`)."""
    import torch  # lazily: validating a spec reads this module's names without torch

    files = readable_image_files(root, skip_unreadable)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    key = folder_cache_key(file_identity(root, files), image_size, crop)
    cached = cache_dir() / "image_folder" / f"{key}.npy"
    expected = (len(files), 3, image_size, image_size)
    if cached.is_file():
        try:
            images = np.load(cached)
            if images.shape == expected and images.dtype == np.uint8:
                return torch.from_numpy(images)
        except (OSError, ValueError):
            pass  # unreadable or truncated by a crash: rebuild it below
    images = preprocess_files(files, image_size, crop)
    _save_atomic(cached, images)
    return torch.from_numpy(images)
