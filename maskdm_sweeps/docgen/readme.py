"""The README's generated sections and the JSON Schema file: render them, tell what is stale, rewrite it.

The README holds each generated section between ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers; other
markers are left alone. This module also renders the CLI's ``--help`` texts (``cli.build_parser()``).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path
from typing import Callable

from .columns import results_columns_markdown
from .spec_reference import json_schema_text, spec_reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = "README.md"
SCHEMA_FILE = "experiments/maskdm-sweep.schema.json"
HELP_WIDTH = 100  # argparse wraps to the terminal: a fixed width keeps the README's help text stable
REGENERATE = ".venv/bin/python -m maskdm_sweeps.docgen"
DESCRIPTION = ("Generated documentation: the README's spec field reference, CLI help and parquet columns, "
               "and the JSON Schema.")


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


# ------------------------------------------------------------------------------------------------- the README
GENERATED: dict[str, Callable[[], str]] = {
    "spec-reference": spec_reference_markdown,
    "cli-help": cli_help_markdown,
    "results-columns": results_columns_markdown,
}
"""Marker name -> generator of the README section between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""


def _marked(name: str) -> re.Pattern[str]:
    """The marker pair of a generated section; group 1 is the BEGIN line, group 2 the END marker."""
    return re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.DOTALL)


def render_readme(text: str) -> str:
    """``text`` with every generated section replaced by its fresh rendering (other markers are left alone)."""
    for name, generate in GENERATED.items():
        pattern = _marked(name)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- BEGIN {name} --> ... <!-- END {name} --> markers")
        body = generate()

        def fill(m: re.Match[str], body: str = body) -> str:  # a function: body's backslashes stay as they are
            return f"{m.group(1)}{body}\n{m.group(2)}"

        text = pattern.sub(fill, text, count=1)
    return text


def readme_section(text: str, name: str) -> str:
    """The text between one pair of markers (for tests and ``--check``)."""
    match = _marked(name).search(text)
    if match is None:
        raise ValueError(f"README has no <!-- BEGIN {name} --> markers")
    return match.group(0)


def stale(root: Path = ROOT) -> list[str]:
    """What differs from a fresh generation: ``README.md (<section>)`` and/or the schema file."""
    out = []
    readme = (root / README).read_text()
    fresh = render_readme(readme)
    out += [f"{README} ({name})" for name in GENERATED if readme_section(readme, name) != readme_section(fresh, name)]
    schema = root / SCHEMA_FILE
    if not schema.exists() or schema.read_text() != json_schema_text():
        out.append(SCHEMA_FILE)
    return out


def write(root: Path = ROOT) -> list[str]:
    """Rewrite what is stale; returns the files written."""
    written = []
    readme = root / README
    text = readme.read_text()
    fresh = render_readme(text)
    if fresh != text:
        readme.write_text(fresh)
        written.append(README)
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
