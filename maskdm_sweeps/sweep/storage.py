"""A sweep that filled its disk ends as one error naming the file that could not be written (see :mod:`.failures`
for how that file is found: the driver's own write, or a stage's ``final: storage`` event)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..sweepspec.expand import SweepPlan
from .events import read_events
from .failures import SweepStorageError, stage_storage_failure, storage_problem
from .ray_setup import ClusterTooSmall


@contextmanager
def storage_failures_named(plan: SweepPlan) -> Iterator[None]:
    """Turn a failure to write the sweep's files, in the driver or in a stage, into a
    :class:`~maskdm_sweeps.sweep.failures.SweepStorageError` naming the file; other errors pass unchanged. Only the
    events written inside the block count."""
    earlier_events = len(read_events(plan.sweep_dir))  # what a full disk is looked for after
    try:
        yield
    except ClusterTooSmall:
        raise
    except Exception as err:
        problem = storage_problem(err, plan.layout, earlier_events)
        if problem is None:
            raise
        raise SweepStorageError(problem) from err
    problem = stage_storage_failure(plan.sweep_dir, earlier_events)
    if problem is not None:  # a stage found the disk full: the sweep ends as that one error
        raise SweepStorageError(problem)
