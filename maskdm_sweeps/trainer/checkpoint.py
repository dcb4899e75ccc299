"""Stage checkpoints: atomic writes with a digest, a bounded history, and fallback past a corrupt file.

A checkpoint is a plain dict of tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``):
model, EMA, optimizer, scaler, step, every RNG state, the resolved config and the noise schedule.

Every state file ``step_<n>.pt`` (a rolling checkpoint, a kept milestone, a branch's seed) has a record beside it,
``step_<n>.json``, with the sha256 and the size of its bytes, computed while they were written (a milestone's record
also holds what reaching it cost). The record is written before the file is renamed into place, so a state file always
has a record: its own, or that of a newer write of the same name, which then fails the check (never passes it). A
state is read by hashing its bytes as they are read, then loading them from memory: one that is missing, is not the
bytes written, or does not load is an :class:`UnusableState`, and the caller falls back to an older state.

Files written before digests were kept have no digest in their record (or no record): such a file is used only if it
loads cleanly as the state of its step with finite weights, and every use logs a warning that it is unverified.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

import torch

from ..files import naming_write_errors, read_json, write_json
from ..layout import step_file, step_files, step_of

log = logging.getLogger(__name__)
STATE_SUFFIX = ".pt"  # step_<n>.pt: a state file
RECORD_SUFFIX = ".json"  # step_<n>.json beside step_<n>.pt (milestones: StageRun.milestone_info is the same file)
SET_ASIDE_SUFFIX = ".corrupt"  # an unusable state and its record, kept for inspection, counted by nothing
_CHUNK = 1 << 24


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be read."""


class UnusableState(CheckpointError):
    """A state file that cannot be used: missing, unreadable, not the bytes that were written, or not loadable.

    ``bad_bytes``: the file's content itself is wrong (not a passing I/O error), so it may be set aside.
    """

    def __init__(self, path: Path, problem: str, bad_bytes: bool = True):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.bad_bytes = Path(path), problem, bad_bytes


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / step_file(step, STATE_SUFFIX)


def state_record(path: Path) -> Path:
    """The record beside the state file ``path``: its digest (``sha256``, ``bytes``) and, for a milestone, its cost."""
    return Path(path).with_suffix(RECORD_SUFFIX)


def recorded_sha256(path: Path) -> str | None:
    """The digest recorded for the state file ``path`` when it was written; None for a file from before digests."""
    record = read_json(state_record(path))
    return record.get("sha256") if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------------------ writing
class _HashingWriter:
    """A binary file that hashes what is written through it (``torch.save`` writes sequentially, never seeks)."""

    def __init__(self, file: IO[bytes]):
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _write_state(final: Path, write: Callable[[_HashingWriter], None], record: dict) -> str:
    """Write a state file and its record atomically: a temp file hashed as it is written (fsync), then the record,
    then the rename (nothing when ``write`` raises). Returns the sha256."""
    final.parent.mkdir(parents=True, exist_ok=True)
    # one temp file per writer (host and pid): two processes that write the same step never share a half file
    tmp = final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with naming_write_errors(final), tmp.open("wb") as f:  # a full disk names the checkpoint, not just errno 28
            out = _HashingWriter(f)
            write(out)
            f.flush()
            os.fsync(f.fileno())
        digest = out.sha256.hexdigest()
        write_json(state_record(final), {**record, "sha256": digest, "bytes": out.size})
        os.replace(tmp, final)  # a reader sees the old file or the whole new one, never half of it
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def save_checkpoint(state: dict, directory: Path, step: int, keep: int = 2) -> Path:
    """Write ``state`` as ``directory/step_<step>.pt`` with its digest record, atomically, and prune old ones."""
    final = checkpoint_path(directory, step)
    _write_state(final, lambda f: torch.save(state, cast(IO[bytes], f)), {"step": step})  # writes, flushes only
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        state_record(old).unlink(missing_ok=True)
    return final


def keep_state(source: Path, kept: Path, record: dict | None = None) -> str:
    """Copy the state file ``source`` to ``kept``, a file of its own (nothing that later rotates or rewrites
    ``source`` reaches it), with ``kept``'s record (``record`` plus the digest); atomic like a save.

    The bytes are checked against ``source``'s digest as they are copied (:class:`UnusableState` when they differ;
    a source without a digest is first loaded whole, see :func:`read_state`). Returns the digest.
    """
    source, kept = Path(source), Path(kept)
    expected = read_json(state_record(source))
    if not (isinstance(expected, dict) and expected.get("sha256")):
        read_state(source)  # unverified: used only if it loads cleanly (and the user is told)
        expected = None

    def copy(out: _HashingWriter) -> None:
        try:
            with source.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
        except OSError as err:
            raise _unreadable(source, err) from err
        if expected is not None and (problem := _mismatch(expected, out.size, out.sha256.hexdigest())):
            raise UnusableState(source, problem)  # before kept or its record exists

    return _write_state(kept, copy, {"step": step_of(kept, STATE_SUFFIX), **(record or {})})


# ------------------------------------------------------------------------------------------------ reading
def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files of ``directory``, oldest first."""
    return step_files(directory, STATE_SUFFIX)


def read_state(path: Path, map_location="cpu") -> tuple[dict, str]:
    """The state in ``path`` and the sha256 of its bytes: hashed as they are read and checked against the digest
    recorded when they were written, then loaded from memory. Raises :class:`UnusableState` naming what is wrong.

    A file without a recorded digest is used only if it loads cleanly as the state of its step, with a warning.
    """
    path = Path(path)
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    record = read_json(state_record(path))
    verified = isinstance(record, dict) and bool(record.get("sha256"))
    if verified and (problem := _mismatch(record, len(data), digest)):
        raise UnusableState(path, problem)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated zip, garbage: not a state
        raise UnusableState(path, f"does not load ({type(err).__name__}: {str(err)[:200]})") from err
    if not verified:
        _check_unverified(path, state)
        log.warning("%s has no recorded digest (written before digests were kept): loaded unverified", path)
    return state, digest


def verify_state(path: Path) -> str:
    """The sha256 of ``path``'s bytes once checked against its record, hashed as they are read (nothing is loaded);
    a file without a recorded digest is loaded whole to check it (see :func:`read_state`). Raises
    :class:`UnusableState`."""
    path = Path(path)
    record = read_json(state_record(path))
    if not (isinstance(record, dict) and record.get("sha256")):
        return read_state(path)[1]
    sha256, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                sha256.update(chunk)
                size += len(chunk)
    except OSError as err:
        raise _unreadable(path, err) from err
    digest = sha256.hexdigest()
    if problem := _mismatch(record, size, digest):
        raise UnusableState(path, problem)
    return digest


def set_aside(path: Path) -> Path:
    """Rename an unusable state file and its record ``*.corrupt``: kept for inspection, no longer a checkpoint or a
    milestone. Returns the file's new path."""
    path = Path(path)
    moved = path.with_name(path.name + SET_ASIDE_SUFFIX)
    for p in (path, state_record(path)):  # the state first: from that moment it no longer counts
        if p.exists():
            os.replace(p, p.with_name(p.name + SET_ASIDE_SUFFIX))
    return moved


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """The state in ``path``, checked against its digest (see :func:`read_state`)."""
    return read_state(path, map_location)[0]


def load_latest_checkpoint(directory: Path, map_location="cpu") -> tuple[dict, Path] | None:
    """The newest usable checkpoint; each newer one that is unusable (corrupt, truncated, not the bytes written) is
    reported with a warning and set aside. None if there is none (every one set aside: the stage starts afresh);
    :class:`CheckpointError` when none could be read for an I/O error (it may pass: nothing is set aside)."""
    candidates = list_checkpoints(directory)
    unreadable = 0
    for path in reversed(candidates):
        try:
            return load_checkpoint(path, map_location), path
        except UnusableState as bad:  # a partial write, flipped bytes: fall back to the previous one
            if bad.bad_bytes:
                set_aside(path)
            else:
                unreadable += 1
            log.warning(
                "checkpoint %s is unusable: %s; %strying the previous one",
                path,
                bad.problem,
                f"set aside as {path.name}{SET_ASIDE_SUFFIX}; " if bad.bad_bytes else "",
            )
    if unreadable:
        raise CheckpointError(f"none of the {len(candidates)} checkpoints in {directory} could be read")
    return None


# ------------------------------------------------------------------------------------------------ checks
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: OSError) -> UnusableState:
    if isinstance(err, FileNotFoundError):
        return UnusableState(path, "missing", bad_bytes=False)
    return UnusableState(path, f"cannot be read ({type(err).__name__}: {err})", bad_bytes=False)


def _mismatch(record: dict, size: int, digest: str) -> str | None:
    """What differs between the bytes read (``size``, ``digest``) and those recorded when written; None if nothing."""
    written = record.get("bytes")
    if written is not None and size < written:
        return f"truncated: {size} bytes of the {written} written"
    if written is not None and size != written:
        return f"{size} bytes, {written} were written"
    if digest != record["sha256"]:
        return (
            f"sha256 {digest[:12]}... is not the {record['sha256'][:12]}... recorded when it was written "
            "(its bytes changed)"
        )
    return None


def _check_unverified(path: Path, state) -> None:
    """A state without a digest must at least be a state of its step whose weights are finite."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UnusableState(path, "loads, but is not a training state (no model weights)")
    step = step_of(path, STATE_SUFFIX)
    if step is not None and state.get("step") != step:
        raise UnusableState(path, f"holds step {state.get('step')}, not {step}")
    for name, tensor in state["model"].items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UnusableState(path, f"model weight {name} is not finite")
