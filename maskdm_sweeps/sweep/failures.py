"""Failures a retry cannot fix, and a full disk told in one block.

A stage whose data is unusable (:class:`~maskdm_sweeps.data.files.DataError`), whose loss diverged
(:class:`~maskdm_sweeps.trainer.TrainingDiverged`) or that could not write its files on a full disk would fail the
same way again. Tune retries every failed trial alike, so the trial's ``stage_error`` event marks such a failure
``final`` (with its cause), and a retry of that stage run within the same ``run``/``resume`` finds the mark and raises
:class:`NotRetried` before starting anything. A later ``resume`` (the data fixed, space freed) starts it again.

The driver turns a full disk (its own failure, or a stage's ``final: storage`` event) into one
:class:`SweepStorageError` naming the file that could not be written.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..data.files import DataError
from ..layout import SweepDir
from ..trainer import TrainingDiverged
from .events import read_events

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A full disk or an exhausted quota: no retry writes more."""

NEARLY_FULL_BYTES = 2**20
"""Free space under the results root below which an unexplained driver failure is taken for a full disk."""


class NotRetried(RuntimeError):
    """A stage run failed earlier in this invocation for a reason a retry cannot fix; the retry stops here."""


class SweepStorageError(OSError):
    """The sweep stopped because its files could not be written (a full disk, a lost mount): one line says where."""


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and what caused it: ``__cause__``, ``__context__`` and a Ray task error's ``cause``."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__cause__, e.__context__, getattr(e, "cause", None)) if isinstance(c, BaseException)]


def storage_error(err: BaseException) -> OSError | None:
    """The full-disk ``OSError`` (``ENOSPC``, ``EDQUOT``) in ``err``'s chain, or None."""
    return next((e for e in causes(err) if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS), None)


def final_cause(err: BaseException) -> str | None:
    """Why no retry would help: ``"storage"``, ``"data"`` or ``"diverged"``; None for anything else (retried)."""
    if storage_error(err) is not None:
        return "storage"
    chain = list(causes(err))
    if any(isinstance(e, DataError) for e in chain):
        return "data"
    if any(isinstance(e, TrainingDiverged) for e in chain):
        return "diverged"
    return None


def final_fields(err: BaseException, stage_dir: Path) -> dict:
    """The fields a ``stage_error`` event gets for ``err``: ``final`` (its cause) when no retry would help, and for a
    full disk the file that could not be written (``path``; the stage directory when the error names none) and
    ``reason``."""
    cause = final_cause(err)
    if cause is None:
        return {}
    if cause != "storage":
        return {"final": cause}
    disk = storage_error(err)
    assert disk is not None  # the cause is "storage" only when there is one
    return {"final": cause, "path": str(disk.filename or stage_dir), "reason": disk.strerror}


def invocation_events(sweep_dir: Path) -> list[dict]:
    """The events of the newest ``run``/``resume`` of the sweep (the one running, in a trial process)."""
    events = read_events(sweep_dir)
    starts = [i for i, e in enumerate(events) if e.get("event") == "invocation"]
    return events[starts[-1] :] if starts else events


def earlier_final_failure(sweep_dir: Path, stage: str, key: str) -> dict | None:
    """The ``stage_error`` event of stage run ``key`` marked ``final`` in this invocation, or None."""
    return next(
        (
            e
            for e in reversed(invocation_events(sweep_dir))
            if e.get("event") == "stage_error" and e.get("final") and e.get("stage") == stage and e.get("key") == key
        ),
        None,
    )


def stage_storage_failure(sweep_dir: Path, since: int) -> str | None:
    """``"<file>: <reason>"`` for the first stage run that found the disk full among the events after the first
    ``since`` (those of the driver asking), or None."""
    event = next(
        (e for e in read_events(sweep_dir)[since:] if e.get("event") == "stage_error" and e.get("final") == "storage"),
        None,
    )
    return f"{event['path']}: {event.get('reason') or 'No space left on device'}" if event else None


def storage_problem(err: BaseException, layout: SweepDir, since: int) -> str | None:
    """``"<path>: <reason>"`` when the driver's ``err`` comes from a failure to write the results, else None.

    The file named is the first one that could not be written: a stage's (from a ``final: storage`` event after the
    first ``since``, see :func:`stage_storage_failure`) before
    the driver's own (Ray wraps errors, and a full disk often shows in the driver as a truncated state file, not as
    an ``OSError``). The results root is named only when no file is known: an ``OSError`` without one, or a nearly
    full disk (< 1 MiB free) behind another error.
    """
    stage_failure = stage_storage_failure(layout.path, since)
    if stage_failure is not None:
        return stage_failure
    oserrors = [e for e in causes(err) if isinstance(e, OSError) and e.errno is not None]
    named = next((e for e in oserrors if e.filename), None)
    if named is not None:
        return f"{named.filename}: {named.strerror}"
    if oserrors:
        return f"{layout.root}: {oserrors[0].strerror}"
    if "No space left on device" in str(err):
        return f"{layout.root}: No space left on device"
    try:
        if shutil.disk_usage(layout.root).free < NEARLY_FULL_BYTES:
            return f"{layout.root}: No space left on device ({type(err).__name__}: {str(err)[:200]})"
    except OSError:
        pass
    return None
