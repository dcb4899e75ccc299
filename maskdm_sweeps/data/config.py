"""``DataConfig``: which images a trial trains on. The ``data:`` section of a sweep spec."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .cifar10 import BATCHES_DIRNAME, batch_files, find_batches_dir, refused_batches
from .files import checked_once, describe_problems
from .image_folder import IMAGE_EXTENSIONS, list_image_files, skipped_message, unreadable_images

log = logging.getLogger(__name__)


DEFAULT_IMAGE_SIZE: dict[str, int | None] = {"digits": 16, "cifar10": 32, "image_folder": None}
"""Pixels on a side when ``image_size`` is left out (None: it must be given)."""


class DataConfig(BaseModel):
    """The dataset, split, resolution, preprocessing and limited-data subset of a trial.

    ``crop`` (image folders only): ``"center"`` takes the largest centred square, then resizes it. ``"celeba64"``
    is the CelebA-64 preset of DDIM and MaskDM: on the 178x218 aligned CelebA image, the 128x128 box centred at
    pixel (x=89, y=121), i.e. rows 57..185 and columns 25..153, then resized to ``image_size`` (bicubic, antialiased).

    Subsets (``fraction``, ``max_images``) come from a permutation seeded by ``subset_seed``: the same config picks
    the same images every time, and a smaller subset with the same seed is contained in a larger one.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Literal["digits", "cifar10", "image_folder"] = Field(
        "digits",
        description="Dataset: 'digits' (scikit-learn's 1797 8x8 grey digits, embedded, no files needed), "
        "'cifar10' (the python-pickle CIFAR-10 files on disk) or 'image_folder' (every image file under path).",
    )
    path: Path | None = Field(
        None,
        description="Where the data lies; required for cifar10 and image_folder, not allowed for digits. "
        f"cifar10: the directory holding {BATCHES_DIRNAME}/ or that directory itself. image_folder: a directory "
        f"searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))} files. '~' is expanded.",
    )
    image_size: int | None = Field(
        None,
        ge=8,
        description="Training resolution in pixels on a side (images are square). Default: 16 for digits "
        "(native 8, resized bilinearly), 32 for cifar10 (its native size); required for image_folder.",
    )
    split: Literal["train", "test"] = Field(
        "train",
        description="Which split: digits has a fixed stratified 80/20 split (1437 train / 360 test images); "
        "cifar10 uses data_batch_* for train and test_batch for test; image_folder has only 'train'.",
    )
    crop: Literal["center", "celeba64"] = Field(
        "center",
        description="image_folder preprocessing before the resize: 'center' = largest centred square; 'celeba64' "
        "= the DDIM/MaskDM CelebA-64 preset, a 128x128 px box centred at (x=89, y=121) of the 178x218 px "
        "aligned image (rows 57..185, cols 25..153).",
    )
    fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of the split to train on, in (0, 1] (limited-data ablations); at least one image "
        "is kept. Applied before max_images.",
    )
    max_images: int | None = Field(
        None, ge=1, description="Cap on the number of images after fraction (images; None = no cap)."
    )
    subset_seed: int = Field(
        0, description="Seed of the permutation that picks the fraction / max_images subset (fixed per config)."
    )
    hflip: bool = Field(False, description="Flip each training image horizontally with probability 1/2.")
    skip_unreadable: bool = Field(
        False,
        description="image_folder only: leave out image files that cannot be opened (corrupt, truncated, a "
        "symlink loop) with a warning and their count, instead of refusing the folder at validation.",
    )
    download: bool = Field(
        False,
        description="cifar10 only: download the archive into path with torchvision when the batch files are "
        "missing (needs internet).",
    )

    @field_validator("path")
    @classmethod
    def _expand_user(cls, path: Path | None) -> Path | None:
        # absolute now: trial processes run in other working directories (Ray Tune's trial dirs)
        return None if path is None else path.expanduser().absolute()

    @model_validator(mode="after")
    def _check_dataset(self, info: ValidationInfo) -> DataConfig:
        if self.name != "image_folder" and self.crop != "center":
            raise ValueError(f"crop={self.crop!r} applies only to name='image_folder', not {self.name!r}")
        if self.name != "image_folder" and self.skip_unreadable:
            raise ValueError(f"skip_unreadable applies only to name='image_folder', not {self.name!r}")
        if self.name != "cifar10" and self.download:
            raise ValueError(f"download applies only to name='cifar10', not {self.name!r}")
        if self.name == "digits" and self.path is not None:
            raise ValueError(f"digits ship with scikit-learn and take no path (got path={str(self.path)!r})")
        if self.name == "image_folder" and self.split == "test":
            raise ValueError("image_folder has only a 'train' split (hold out images in another folder instead)")
        if self.name in ("cifar10", "image_folder") and (info.context or {}).get("check_paths", True):
            self._check_path()  # `plan` skips this: a sweep is planned on a laptop that lacks the data
        if self.image_size is None:
            self.image_size = DEFAULT_IMAGE_SIZE[self.name]
            if self.image_size is None:
                raise ValueError(f"image_size is required for name={self.name!r} (pixels on a side, e.g. 64)")
        return self

    def _check_path(self) -> None:
        """Fail now, at validation, rather than minutes later inside a trial."""
        path = self.path
        if path is None:
            raise ValueError(f"path is required for name={self.name!r}")
        if self.name == "cifar10":
            if self.download:
                return  # a missing or empty path is what download fills
            if not path.exists():
                raise ValueError(f"cifar10 path {str(path)!r} does not exist (set download: true to fetch it)")
            batches_dir = find_batches_dir(path, self.split)
            if batches_dir is None:
                wanted = "test_batch" if self.split == "test" else "data_batch_*"
                raise ValueError(
                    f"no CIFAR-10 {self.split} batches ({wanted}) in {str(path)!r} or "
                    f"{str(path / BATCHES_DIRNAME)!r} (set download: true to fetch them)"
                )
            files = batch_files(batches_dir, self.split)
            refused = checked_once("cifar10", batches_dir, files, refused_batches)  # every batch, not the first
            if refused:
                raise ValueError("; ".join(reason for _, reason in refused))  # each names its file
        else:
            self._check_image_folder(path)

    def _check_image_folder(self, path: Path) -> None:
        """Every image file decodes, and every entry is a regular file (checked by ``stat``, never opened: a FIFO
        would block); with ``skip_unreadable`` the others are left out, with a warning (once per folder state)."""
        if not path.is_dir():
            raise ValueError(f"image_folder path {str(path)!r} does not exist or is not a directory")
        files = list_image_files(path)
        if not files:
            raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {str(path)!r}")
        bad = unreadable_images(path, files)
        if bad and not self.skip_unreadable:
            raise ValueError(
                f"{len(bad)} unreadable image file(s) under {str(path)!r}: {describe_problems(bad)} "
                "(fix or remove them, or set data.skip_unreadable: true to leave them out)"
            )
        if len(bad) == len(files):
            raise ValueError(
                f"none of the {len(files)} image files under {str(path)!r} can be read: {describe_problems(bad)}"
            )
        if bad:
            _warn_once(skipped_message(path, bad, len(files)))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time only: a spec's data is validated once per trial it expands to."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
