"""How the package writes and reads its small files: JSON whole or not at all, JSON lines whole, and write errors
that name their file (standard library only: the trainer writes with these too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def naming_write_errors(path: Path) -> Iterator[None]:
    """An ``OSError`` raised while writing ``path`` names it: a write that fails when a buffer is flushed (a full
    disk noticed on close) raises one that names no file."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_json(path: Path, data: Any) -> Path:
    """Write JSON whole or not at all: a reader (or a process killed mid-write) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with naming_write_errors(path):
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    return path


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single O_APPEND write: lines of concurrent processes stay whole."""
    line = (json.dumps(record) + "\n").encode()
    with naming_write_errors(path):
        fd = os.open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """The whole records of a JSON-lines file; a line cut short (a process killed mid-write) is skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
