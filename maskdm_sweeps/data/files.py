"""File identity and content keys: what lets a cache or a reference statistic know it still describes the data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_identity(root: Path, files: list[Path]) -> list[tuple[str, int, int]]:
    """``(relative posix name, size in bytes, mtime in ns)`` per file, in the order given.

    Size and mtime change whenever a file is rewritten, and stat-ing is cheap even for 200k files,
    so this stands in for hashing the contents.
    """
    identity = []
    for f in files:
        st = f.stat()
        identity.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return identity


def content_key(payload: object, length: int = 16) -> str:
    """Short sha256 hex digest of a JSON-serialisable ``payload`` (dict keys sorted, so order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cache_dir() -> Path:
    """Root of the preprocessing cache: ``$MASKDM_CACHE``, else ``~/.cache/maskdm_sweeps`` (created on demand)."""
    return Path(os.environ.get("MASKDM_CACHE") or Path.home() / ".cache" / "maskdm_sweeps").expanduser()
