"""Stage checkpoints: atomic writes, a bounded history, and fallback past a corrupt file.

A checkpoint is a plain dict of tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``):
model, EMA, optimizer, scaler, step, every RNG state, the resolved config and the noise schedule.
"""

from __future__ import annotations

import logging
import os
import socket
import re
import shutil
from pathlib import Path

import torch

from ..layout import naming_write_errors

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be read."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}.pt"


def save_checkpoint(state: dict, directory: Path, step: int, keep: int = 2) -> Path:
    """Write ``state`` as ``directory/step_<step>.pt`` atomically (temp file, fsync, rename) and prune old ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    # one temp file per writer (host and pid): two processes that write the same step never share a half file
    tmp = final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with naming_write_errors(final), tmp.open("wb") as f:  # a full disk names the checkpoint, not just errno 28
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)  # a reader sees the old file or the whole new one, never half of it
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def keep_state(checkpoint: Path, kept: Path) -> Path:
    """Keep ``checkpoint``'s file as ``kept`` for good: a hard link (no copy; pruning the checkpoint leaves it), a
    copy where the filesystem has no hard links. Atomic like a save."""
    kept = Path(kept)
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(f".{kept.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoint, tmp)
    except OSError:
        shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, kept)
    return kept


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files of ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest_checkpoint(directory: Path, map_location="cpu") -> tuple[dict, Path] | None:
    """The newest checkpoint that loads, skipping (and reporting) corrupt or truncated ones; None if there is none."""
    candidates = list_checkpoints(directory)
    for path in reversed(candidates):
        try:
            return load_checkpoint(path, map_location), path
        except Exception as err:  # a truncated zip, a partial write: fall back to the previous one
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", path, type(err).__name__, err)
    if candidates:
        raise CheckpointError(f"none of the {len(candidates)} checkpoints in {directory} could be read")
    return None
