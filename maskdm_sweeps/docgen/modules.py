"""``docs/design.md``'s table of the package: every module with the first paragraph of its docstring.

Read from the source files (``ast``, nothing is imported), so a module added, moved or removed shows up at the next
``python -m maskdm_sweeps.docgen``; a module without a docstring is an error that names it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .markdown import first_paragraph, md_table

PACKAGE = Path(__file__).resolve().parents[1]


def _summary(path: Path) -> str:
    """The first paragraph of the module's docstring, with reST's double backticks as markdown code."""
    doc = ast.get_docstring(ast.parse(path.read_text(), filename=str(path)))
    if not doc:
        raise ValueError(f"{path} has no module docstring: the module table of docs/design.md needs one")
    return re.sub(r":(?:mod|class|func|data|meth):`([^`]+)`", r"`\1`", first_paragraph(doc).replace("``", "`"))


def _name(path: Path, package: Path) -> str:
    """``sweep/runner.py`` for a module, ``sweep/`` for a package (its ``__init__.py``)."""
    rel = path.relative_to(package)
    return f"{rel.parent.as_posix()}/" if rel.name == "__init__.py" else rel.as_posix()


def _order(path: Path, package: Path) -> tuple:
    """Top-level modules first, then each package followed by its modules, alphabetically."""
    rel = path.relative_to(package)
    return (len(rel.parts) > 1, rel.parts[:-1], rel.name != "__init__.py", rel.name)


def module_rows(package: Path = PACKAGE) -> list[list[str]]:
    """[module, summary] for every ``.py`` file of the package but its own ``__init__.py``."""
    files = [p for p in package.rglob("*.py") if p != package / "__init__.py" and "__pycache__" not in p.parts]
    return [[f"`{_name(p, package)}`", _summary(p)] for p in sorted(files, key=lambda p: _order(p, package))]


def module_table_markdown() -> str:
    """The table of every module of ``maskdm_sweeps`` and what it holds."""
    return md_table(["module", "what it holds"], module_rows())
