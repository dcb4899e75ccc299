"""File identity and content keys: what lets a cache or a reference statistic know it still describes the data;
and :class:`DataError`, the data on disk being unusable as it is."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

CHECK_FORMAT = 1
"""Part of a check record's key: bump it when a check changes so that old verdicts are not reused."""


class DataError(ValueError):
    """Data on disk that cannot be used as it is (an image that does not decode, an entry that is not a regular
    file, a refused batch file). Retrying does not help, fixing or removing the file does: a stage that fails with
    it is not retried."""


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


Problems = list[tuple[Path, str]]
"""Files refused by a check, each with the reason, in the order checked."""


def checked_once(kind: str, root: Path, files: list[Path], check: Callable[[list[Path]], Problems]) -> Problems:
    """``check(files)``, remembered under ``cache_dir()/checks/`` by the files' identity (names, sizes, mtimes).

    Decoding a 200k-image folder takes minutes; ``validate``, the driver (once per trial it expands) and every
    trial process would otherwise repeat it. Touching any file checks the folder again.
    """
    key = content_key(
        {"format": CHECK_FORMAT, "kind": kind, "root": str(Path(root).absolute()), "files": file_identity(root, files)},
        length=32,
    )
    record = cache_dir() / "checks" / f"{kind}-{key}.json"
    try:
        return [(root / name, str(reason)) for name, reason in json.loads(record.read_text())]
    except (OSError, ValueError, TypeError):
        pass  # not checked yet (or the record is damaged): check now
    problems = check(files)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[f.relative_to(root).as_posix(), reason] for f, reason in problems]))
        os.replace(tmp, record)
    except OSError:
        pass  # a cache only: the verdict stands without it
    return problems


def describe_problems(problems: Problems, shown: int = 5) -> str:
    """``"<file>: <reason>; ..."`` for the first ``shown`` problems, ``" ..."`` after them when there are more."""
    text = "; ".join(f"{file}: {reason}" for file, reason in problems[:shown])
    return text + (" ..." if len(problems) > shown else "")
