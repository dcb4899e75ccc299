"""A folder of image files (e.g. CelebA's ``img_align_celeba/``), cropped, resized and cached as one uint8 array.

Files are found recursively by extension and taken in sorted relative-path order, so the i-th image is the same on
every machine. Decoding 200k JPEGs takes minutes, so the result is cached under ``$MASKDM_CACHE/image_folder/``,
keyed by the file list (names, sizes, mtimes), the crop and the size: touching any file recomputes it.

An entry that is not a regular file (a FIFO, a socket, a device, a broken symlink) is found with ``stat`` and never
opened; it is refused, naming it, or left out with ``skip_unreadable``. So is a file that does not decode.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .files import DataError, Problems, cache_dir, checked_once, content_key, describe_problems, file_identity

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch

log = logging.getLogger(__name__)

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
    """Image files under ``root``, recursively, in no particular order."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root``, sorted by relative path: the deterministic order of the dataset."""
    return sorted(iter_image_files(root), key=lambda f: f.relative_to(root).as_posix())


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def entry_problem(file: Path) -> str | None:
    """Why ``file`` is not a regular file (a FIFO, a socket, a device, a directory, a broken symlink or a symlink
    loop), from ``os.stat`` alone; ``None`` for a regular file. Such an entry is never opened: opening a FIFO blocks
    until something writes to it, which would hang ``validate`` or a trial."""
    try:
        mode = os.stat(file).st_mode  # follows symlinks: a link to a regular file is one
    except OSError as err:  # a broken symlink, a symlink loop (ELOOP), a file removed meanwhile
        return f"{type(err).__name__}: {err.strerror or err}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a file")
    return f"{kind}, not a regular file"


def decode_problem(file: Path) -> str | None:
    """Why the regular file ``file`` cannot be used as an image (``None`` when it decodes): its checksums are
    verified (``Image.verify``) and every pixel decoded (``Image.load``), so a corrupt or truncated file, a broken
    compressed stream behind valid checksums, or a non-image with an image extension is named here rather than
    inside a trial."""
    try:
        with Image.open(file) as im:
            im.verify()
        with Image.open(file) as im:  # verify() leaves the image unusable: decode from a fresh open
            im.load()
    except Exception as err:  # whatever a decoder raises (OSError, SyntaxError, zlib.error, a decompression bomb)
        return f"{type(err).__name__}: {err.strerror if isinstance(err, OSError) and err.strerror else err}"
    return None


def _decode_problems(files: list[Path], workers: int | None = None) -> Problems:
    """The files of ``files`` that :func:`decode_problem` refuses, with the reason, in order (threads: Pillow
    releases the GIL while decoding)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(decode_problem, files, chunksize=256))
    return [(f, p) for f, p in zip(files, problems, strict=True) if p is not None]


def irregular_entries(files: list[Path]) -> Problems:
    """The entries of ``files`` that are not regular files, with :func:`entry_problem`'s reason, in order."""
    return [(f, p) for f in files if (p := entry_problem(f)) is not None]


def unreadable_images(root: Path, files: list[Path]) -> Problems:
    """The files of ``files`` (under ``root``) that cannot be used as images, with the reason, in order: entries that
    are not regular files (found by ``stat``, never opened), then every regular file decoded, once per version of
    the folder (the verdict is kept in the cache, see :func:`~maskdm_sweeps.data.files.checked_once`)."""
    irregular = irregular_entries(files)
    skipped = {f for f, _ in irregular}
    regular = [f for f in files if f not in skipped]
    found = dict(irregular + checked_once("image_folder", root, regular, _decode_problems))
    return [(f, found[f]) for f in files if f in found]


def skipped_message(root: Path, bad: Problems, total: int) -> str:
    """One line: how many of ``total`` image files under ``root`` are left out, and the first few with the reason."""
    named = [(f.relative_to(root), reason) for f, reason in bad]  # the root is named once, before them
    return (
        f"skipping {len(bad)} unreadable image file(s) of {total} under {root} (data.skip_unreadable): "
        f"{describe_problems(named, shown=3)}"
    )


def readable_image_files(root: Path, skip_unreadable: bool, warn: bool = True) -> list[Path]:
    """:func:`list_image_files`. With ``skip_unreadable``: without the files that cannot be used (a warning gives
    their count and the first few, unless ``warn`` is off). Without it: :class:`DataError` for entries that are not
    regular files, before anything opens them (the rest are named when they fail to decode)."""
    files = list_image_files(root)
    if not skip_unreadable:
        irregular = irregular_entries(files)
        if irregular:
            raise DataError(
                f"{len(irregular)} entr{'y' if len(irregular) == 1 else 'ies'} under {root} "
                f"that are not regular files: {describe_problems(irregular)} (remove them, or set "
                "data.skip_unreadable: true to leave them out)"
            )
        return files
    bad = unreadable_images(root, files)
    if bad and warn:
        log.warning(skipped_message(root, bad, len(files)))
    unusable = {f for f, _ in bad}
    return [f for f in files if f not in unusable]


def preprocess_image(file: Path, image_size: int, crop: str) -> np.ndarray:
    """One file as uint8 ``(3, S, S)``: RGB, cropped with ``CROPS[crop]``, resized with antialiased bicubic.

    Raises :class:`DataError` naming the file when it does not decode or does not fit the crop.
    """
    try:
        with Image.open(file) as im:
            rgb = im.convert("RGB")
    except Exception as err:  # whatever the decoder raises: the file is named, and no retry would read it better
        raise DataError(
            f"image file {file} does not decode ({type(err).__name__}: {err}); fix or remove it, or "
            "set data.skip_unreadable: true to leave it out"
        ) from err
    try:
        box = CROPS[crop](*rgb.size)
    except ValueError as err:
        raise DataError(f"{file}: {err}") from None
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
    """Every image under ``root`` as uint8 ``(n, 3, S, S)``, from the cache when the files are unchanged.

    ``skip_unreadable``: without the files that cannot be used (see :func:`readable_image_files`); otherwise
    :class:`DataError` names the first entry that is not a regular file or does not decode.
    """
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
