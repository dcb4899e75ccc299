"""Ray's and Tune's own messages go to ``<sweep>/driver.log`` while a sweep runs, not to the terminal.

A failing trial makes Tune log its whole traceback, once per attempt, and a full disk adds the tracebacks of every
failed state sync: hundreds of lines before the one that says what happened. The terminal keeps the progress and our
own errors; the error block names this file for the details.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY_LOGGER = "ray"
"""Every logger of Ray, Tune and Train is below it; ``ray.init(configure_logging=False)`` leaves it without a
handler, so its records would reach the terminal through logging's last resort."""


class _QuietFileHandler(logging.FileHandler):
    """A file handler that drops a record it cannot write: on a full disk, logging's own report of the failure
    (a traceback on the terminal) is what this log exists to avoid."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def ray_messages_to(path: Path) -> Iterator[Path]:
    """Send the records of Ray's loggers to ``path`` (appended) instead of the terminal, until the block ends.

    Enter it after ``ray.init``, which clears the handlers of Ray's logger.
    """
    logger = logging.getLogger(RAY_LOGGER)
    before = (list(logger.handlers), logger.propagate)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # the handler drops what it cannot write
    handler = _QuietFileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in before[0]:
        logger.removeHandler(h)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:
            pass  # its last records could not be flushed (a full disk): dropped, as in handleError
        for h in before[0]:
            logger.addHandler(h)
        logger.propagate = before[1]
