"""An append-only log of stage runs per sweep (``events.jsonl``): what ran, where, from which step, how it ended.

It makes "never trains the same thing twice" checkable: every start records the step it resumed from.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EVENTS_FILE = "events.jsonl"


def append_event(sweep_dir: Path, event: str, **fields) -> None:
    """One JSON line; O_APPEND keeps lines from concurrent trial processes whole."""
    line = json.dumps({"time": time.time(), "event": event, **fields}) + "\n"
    fd = os.open(Path(sweep_dir) / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(sweep_dir: Path) -> list[dict]:
    path = Path(sweep_dir) / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
