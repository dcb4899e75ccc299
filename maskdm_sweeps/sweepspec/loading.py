"""YAML in, validated pydantic models out, with errors that name the dotted field and the file's line.

``load_model(path, TrialConfig, overrides=["finetune.lr=1e-4"])`` reads the file, applies ``--set`` overrides
(values parsed as YAML: ``0.5``, ``[1, 2]``, ``{strategy: crop, crop_size: 5}``), validates, and raises
:class:`SpecError` listing every problem as ``field.path: message (file.yaml:LINE)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    path: str  # dotted field path, "" for the whole document
    message: str
    line: int | None  # 1-based line in the file, None when the value came from --set or a default
    source: str

    def __str__(self) -> str:
        where = f" ({self.source}:{self.line})" if self.line else f" ({self.source})" if self.source else ""
        return f"{self.path or '<document>'}: {self.message}{where}"


class SpecError(ValueError):
    """Bad input: the CLI prints it and exits with code 2 before anything starts."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ----------------------------------------------------------------------------------------------------- YAML + lines
def _line_index(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path of a composed YAML tree to its 1-based line (the key's line for mapping entries)."""
    out = {} if out is None else out
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            _line_index(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, prefix + (i,), out)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


MAX_SPEC_BYTES = 1_000_000
"""A spec is a few kilobytes; past this it is not one (and parsing it would take minutes and gigabytes)."""
MAX_SPEC_VALUES = 100_000
"""Values a spec may expand to, aliases followed: a YAML alias bomb expands exponentially."""
MAX_SPEC_DEPTH = 50
"""Nesting levels a spec may have (the deepest real spec has about 6)."""


def _expanded_size_and_depth(node: yaml.Node) -> tuple[int, int]:
    """Values and nesting depth of a composed YAML tree with every alias expanded, counted without expanding
    (memoised per node: an alias is the same node object), iteratively (no recursion limit)."""
    memo: dict[int, tuple[int, int]] = {}
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        if id(current) in memo:
            continue
        children = (
            [v for kv in current.value for v in kv]
            if isinstance(current, yaml.MappingNode)
            else list(current.value)
            if isinstance(current, yaml.SequenceNode)
            else []
        )
        if children_done or not children:
            size = 1 + sum(memo.get(id(c), (0, 0))[0] for c in children)
            depth = 1 + max((memo.get(id(c), (0, 0))[1] for c in children), default=0)
            memo[id(current)] = (min(size, 10 * MAX_SPEC_VALUES), depth)
        else:
            stack.append((current, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
    return memo[id(node)]


def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file; returns ``(data, {key path: line})``. A file too large, not UTF-8 text, not YAML, nested
    too deeply or expanding to too many values (aliases) becomes a :class:`SpecError`, each within a second."""
    path = Path(path)

    def problem(message: str, line: int | None = None) -> SpecError:
        return SpecError([Problem("", message, line, str(path))])

    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise problem(f"the file is {size:,} bytes; a spec is a few kilobytes (limit {MAX_SPEC_BYTES:,})")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise problem(f"cannot read the file: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise problem(f"not a UTF-8 text file (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            values, depth = _expanded_size_and_depth(node)
            if depth > MAX_SPEC_DEPTH:
                raise problem(f"nested {depth} levels deep; a spec has a handful (limit {MAX_SPEC_DEPTH})")
            if values > MAX_SPEC_VALUES:
                raise problem(f"expands to more than {MAX_SPEC_VALUES:,} values (nested YAML aliases?)")
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        message = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
        raise problem(f"invalid YAML: {message or err}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise problem(f"nested too deeply to parse (limit {MAX_SPEC_DEPTH} levels)") from None
    if data is None:
        data = {}
    return data, (_line_index(node) if node is not None else {})


# ----------------------------------------------------------------------------------------------------- overrides
def apply_overrides(data: dict, overrides: list[str]) -> tuple[dict, set[tuple]]:
    """Apply ``key.path=value`` strings to nested dicts (creating levels); returns the data and the paths set."""
    touched = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError([Problem(key, f"--set expects key=value, got {item!r}", None, "--set")])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise SpecError([Problem(key, f"cannot parse the value {raw!r}: {err}", None, "--set")]) from None
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
        touched.add(tuple(parts))
    return data, touched


# ----------------------------------------------------------------------------------------------------- errors
def _yaml_path(loc: tuple, data: Any) -> tuple:
    """Turn a pydantic error location into a path through the YAML data (dropping union tags like 'patch')."""
    path, node = [], data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            path.append(part)
            node = node[part]
        elif (
            isinstance(node, (dict, list))
            and isinstance(part, str)
            and "[" not in part
            and part not in ("function-after",)
        ):
            # a tagged-union member name or a missing key: keep missing keys (they are the field), skip union tags
            if isinstance(node, dict) and node.get("strategy") == part:
                continue
            path.append(part)
            node = None
        else:
            continue
    return tuple(path)


def _line_for(path: tuple, lines: dict[tuple, int]) -> int | None:
    for n in range(len(path), -1, -1):  # a missing field points at its parent's line
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def problems_from_validation(
    err: ValidationError, data: Any, lines: dict, source: str, touched=frozenset(), prefix: tuple = ()
) -> list[Problem]:
    problems = []
    for e in err.errors():
        path = prefix + _yaml_path(tuple(e["loc"]), data)
        if e["type"] == "union_tag_invalid":  # point at the tag itself (mask.strategy), not the section
            path += (e["ctx"]["discriminator"].strip("'"),)
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see the field reference)"
        from_set = any(path[: len(t)] == t for t in touched)
        line = None if from_set else _line_for(path, lines)
        problems.append(Problem(".".join(str(p) for p in path), message, line, "--set" if from_set else source))
    return problems


def validate(model: type[M], data: Any, lines: dict, source: str, touched=frozenset(), check_paths: bool = True) -> M:
    try:
        return model.model_validate(data, context={"check_paths": check_paths})
    except ValidationError as err:
        raise SpecError(problems_from_validation(err, data, lines, source, touched)) from None


def read_mapping(path: Path, overrides: Sequence[str] = ()) -> tuple[dict, dict[tuple, int], set[tuple]]:
    """A YAML file that must hold a mapping, with ``--set`` overrides applied: ``(data, lines, paths set)``."""
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError([Problem("", "the file must hold a mapping of fields", 1, str(path))])
    data, touched = apply_overrides(data, list(overrides))
    return data, lines, touched


def load_model(path: Path, model: type[M], overrides: Sequence[str] = ()) -> M:
    """Read, override and validate ``path`` as ``model``; raises :class:`SpecError` on any problem."""
    data, lines, touched = read_mapping(path, overrides)
    return validate(model, data, lines, str(path), touched)
