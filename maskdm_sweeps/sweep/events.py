"""An append-only log of stage runs per sweep (``events.jsonl``): what ran, where, from which step, how it ended.

It makes "never trains the same thing twice" checkable: every start records the step it resumed from.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..files import append_jsonl, read_jsonl
from ..layout import EVENTS_FILE


def append_event(sweep_dir: Path, event: str, **fields) -> None:
    """One JSON line; O_APPEND keeps lines from concurrent trial processes whole."""
    append_jsonl(Path(sweep_dir) / EVENTS_FILE, {"time": time.time(), "event": event, **fields})


def read_events(sweep_dir: Path, since_invocation: int | None = None) -> list[dict]:
    """The sweep's events, oldest first; ``since_invocation``: only those after that ``run``/``resume`` began."""
    events = read_jsonl(Path(sweep_dir) / EVENTS_FILE)
    if since_invocation is None:
        return events
    starts = [i for i, e in enumerate(events) if e.get("event") == "invocation" and e.get("number") == since_invocation]
    return events[starts[-1] :] if starts else []
