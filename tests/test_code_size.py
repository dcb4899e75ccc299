"""Size limits of the package's source: no module over 400 lines, no function (or method) over 80 lines.

Lines are counted as the file holds them (after `make format`, which is what CI checks), from a function's ``def``
line to its last line, docstring and comments included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maskdm_sweeps"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_lines(source: str) -> int:
    return len(source.splitlines())


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``{qualified name: lines}`` of the functions in ``source`` longer than ``limit`` lines (nested ones too)."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                if lines > limit:
                    found[name.rstrip(".")] = lines
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def package_sources() -> dict[str, str]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, "the package's modules must be found"
    return {str(path.relative_to(PACKAGE.parent)): path.read_text() for path in files}


def test_the_measures_catch_planted_oversized_code():
    method = "    def big(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(85))  # 86 lines
    assert long_functions(f"class A:\n{method}\n\ndef small():\n    pass\n") == {"A.big": 86}
    nested = "def f():\n    def inner():\n" + "        pass\n" * 90
    assert long_functions(nested) == {"f": 92, "f.inner": 91}
    assert long_functions(nested, limit=100) == {}
    assert module_lines("a = 1\n" * 401) == 401


def test_no_module_is_over_400_lines():
    over = {name: n for name, src in package_sources().items() if (n := module_lines(src)) > MAX_MODULE_LINES}
    assert over == {}, f"modules over {MAX_MODULE_LINES} lines: split them by responsibility"


def test_no_function_is_over_80_lines():
    over = {f"{name}::{fn}": n for name, src in package_sources().items() for fn, n in long_functions(src).items()}
    assert over == {}, f"functions over {MAX_FUNCTION_LINES} lines: extract well-named steps"
