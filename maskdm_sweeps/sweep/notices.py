"""What a trial process notices reaches the user: warnings of our loggers become ``notice`` events.

A worker that skips unreadable images, falls back past a corrupt checkpoint or retrains a damaged milestone says so
with ``logging.getLogger(__name__).warning(...)``, where it happens (the trainer and the data code know nothing of
sweeps). In a trial process, :func:`capture_notices` turns every such warning of a ``maskdm_sweeps.*`` logger into a
``notice`` record of the sweep's ``events.jsonl``; the driver prints each as it arrives and again at the end, and
``report.md`` lists them. (Ray keeps a worker's own log output in its session folder, where nobody looks.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..layout import NOTICE_EVENT
from .events import append_event

ROOT_LOGGER = "maskdm_sweeps"


class NoticeHandler(logging.Handler):
    """Appends each warning (or worse) to the sweep's events as a ``notice`` of ``unit`` (a trial or a line)."""

    def __init__(self, sweep_dir: Path, unit: str):
        super().__init__(logging.WARNING)
        self.sweep_dir, self.unit = Path(sweep_dir), unit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append_event(
                self.sweep_dir,
                NOTICE_EVENT,
                unit=self.unit,
                level=record.levelname,
                logger=record.name,
                message=record.getMessage(),
            )
        except Exception:  # a notice must never break training (a full disk says so elsewhere)
            self.handleError(record)


@contextmanager
def capture_notices(sweep_dir: Path, unit: str) -> Iterator[None]:
    """While inside, warnings of ``maskdm_sweeps.*`` loggers in this process are notices of ``unit``. Nested uses
    for the same sweep keep the outer unit (one record per warning)."""
    logger = logging.getLogger(ROOT_LOGGER)
    if any(isinstance(h, NoticeHandler) and h.sweep_dir == Path(sweep_dir) for h in logger.handlers):
        yield
        return
    handler = NoticeHandler(sweep_dir, unit)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def notice_line(event: dict, label: str | None = None) -> str:
    """One plain line for a notice: ``notice  <stage run>: <message>``."""
    return f"notice  {label or event.get('unit', '?')}: {event.get('message', '')}"
