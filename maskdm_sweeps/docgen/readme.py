"""The documentation's generated sections and the JSON Schema file: render them, tell what is stale, rewrite it.

A page under ``docs/`` holds each generated section between ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers
(:data:`PAGES` says which page holds which); other markers are left alone. This module also renders the CLI's
``--help`` texts (``cli.build_parser()``).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

from .columns import results_columns_markdown
from .modules import module_table_markdown
from .spec_reference import json_schema_text, spec_reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = "README.md"
DESIGN = "docs/design.md"
SCHEMA_FILE = "experiments/maskdm-sweep.schema.json"
HELP_WIDTH = 100  # argparse wraps to the terminal: a fixed width keeps the generated help text stable
REGENERATE = ".venv/bin/python -m maskdm_sweeps.docgen"
DESCRIPTION = (
    "Generated documentation: the spec field reference, CLI help, parquet columns and the module table "
    "of the pages under docs/, and the JSON Schema."
)


# ------------------------------------------------------------------------------------------------- CLI help
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _fixed_width(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` formatting its help at :data:`HELP_WIDTH` columns, whatever the terminal (or ``COLUMNS``) says."""
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=HELP_WIDTH)
    return parser


def cli_help_markdown() -> str:
    """``maskdm-sweep --help`` and each subcommand's ``--help``, wrapped at a fixed width, as text blocks."""
    from ..cli import build_parser

    parser = _fixed_width(build_parser())
    if parser.prog != "maskdm-sweep":
        raise ValueError(f"the CLI's prog is {parser.prog!r}, expected 'maskdm-sweep'")
    blocks = [("maskdm-sweep --help", parser.format_help())]
    for name, sub in _subcommands(parser).items():
        blocks.append((f"maskdm-sweep {name} --help", _fixed_width(sub).format_help()))
    return "\n\n".join(f"```text\n$ {cmd}\n{text.rstrip()}\n```" for cmd, text in blocks)


# ------------------------------------------------------------------------------------------------- the pages
GENERATED: dict[str, Callable[[], str]] = {
    "spec-reference": spec_reference_markdown,
    "cli-help": cli_help_markdown,
    "results-columns": results_columns_markdown,
    "module-table": module_table_markdown,
}
"""Marker name -> generator of the section between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
PAGES: dict[str, str] = {
    "spec-reference": "docs/spec-reference.md",
    "cli-help": "docs/cli.md",
    "results-columns": "docs/results.md",
    "module-table": DESIGN,
}
"""Marker name -> the page (relative to the repository root) that holds its section."""


def _marked(name: str) -> re.Pattern[str]:
    """The marker pair of a generated section; group 1 is the BEGIN line, group 2 the END marker."""
    return re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.DOTALL)


def sections_of(page: str) -> list[str]:
    """The generated sections ``page`` holds."""
    return [name for name, home in PAGES.items() if home == page]


def render_page(text: str, page: str) -> str:
    """``text`` of ``page`` with each of its generated sections replaced by a fresh rendering (other markers are
    left alone)."""
    for name in sections_of(page):
        pattern = _marked(name)
        if not pattern.search(text):
            raise ValueError(f"{page} has no <!-- BEGIN {name} --> ... <!-- END {name} --> markers")
        body = GENERATED[name]()

        def fill(m: re.Match[str], body: str = body) -> str:  # a function: body's backslashes stay as they are
            return f"{m.group(1)}{body}\n{m.group(2)}"

        text = pattern.sub(fill, text, count=1)
    return text


def section(text: str, name: str) -> str:
    """The text between one pair of markers (for tests and ``--check``)."""
    match = _marked(name).search(text)
    if match is None:
        raise ValueError(f"no <!-- BEGIN {name} --> markers (expected in {PAGES.get(name, 'a page')})")
    return match.group(0)


def stale(root: Path = ROOT) -> list[str]:
    """What differs from a fresh generation: ``<page> (<section>)`` and/or the schema file."""
    out = []
    for page in dict.fromkeys(PAGES.values()):
        text = (root / page).read_text()
        fresh = render_page(text, page)
        out += [f"{page} ({name})" for name in sections_of(page) if section(text, name) != section(fresh, name)]
    schema = root / SCHEMA_FILE
    if not schema.exists() or schema.read_text() != json_schema_text():
        out.append(SCHEMA_FILE)
    return out


def write(root: Path = ROOT) -> list[str]:
    """Rewrite what is stale; returns the files written."""
    written = []
    for page in dict.fromkeys(PAGES.values()):
        path = root / page
        text = path.read_text()
        fresh = render_page(text, page)
        if fresh != text:
            path.write_text(fresh)
            written.append(page)
    schema = root / SCHEMA_FILE
    if not schema.exists() or schema.read_text() != json_schema_text():
        schema.write_text(json_schema_text())
        written.append(SCHEMA_FILE)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m maskdm_sweeps.docgen [--check] [--root DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m maskdm_sweeps.docgen", description=DESCRIPTION)
    parser.add_argument("--check", action="store_true", help="exit 1 naming what is stale; write nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.root)
        for item in out_of_date:
            print(f"stale: {item}", file=sys.stderr)
        if out_of_date:
            print(f"regenerate with: {REGENERATE}", file=sys.stderr)
        return 1 if out_of_date else 0
    written = write(args.root)
    print("\n".join(f"wrote {w}" for w in written) or "up to date")
    return 0
