"""Markdown pieces every generated section uses: one-line text, tables, a docstring's first paragraph."""

from __future__ import annotations

import re


def md_text(text: str, cell: bool = True) -> str:
    """Markdown text on one line: ``<`` escaped where it would open an HTML tag (``<output_dir>``) outside code
    spans, and for a table ``cell`` also ``|``."""
    parts = re.split(r"(`+[^`]*`+)", " ".join(text.split()))
    out = "".join(p if p.startswith("`") else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", p) for p in parts)
    return out.replace("|", "\\|") if cell else out


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; every cell goes through :func:`md_text`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())
