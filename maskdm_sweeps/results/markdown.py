"""Markdown for ``report.md``: a GitHub-flavoured table from a DataFrame, and one value as a cell."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def cell(value: Any, fmt: str) -> str:
    """One value as a table cell: NaN and nulls as an en dash, booleans as yes/no, floats by ``fmt``."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, fmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, floatfmt: str | dict[str, str] = ".2f", index: bool = False) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned); NaN and nulls print as an en dash."""
    if index:
        df = df.reset_index()
    fmts = floatfmt if isinstance(floatfmt, dict) else {}
    default = ".2f" if isinstance(floatfmt, dict) else floatfmt
    header = [str(c) for c in df.columns]
    body = [
        [
            cell(v.item() if hasattr(v, "item") else v, fmts.get(c, default))
            for c, v in zip(df.columns, row, strict=True)
        ]
        for row in df.itertuples(index=False, name=None)
    ]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
