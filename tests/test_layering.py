"""Import boundaries: the method and the trainer stay free of ray, mlflow and yaml; no import circle anywhere; the
planning commands never load Ray."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maskdm_sweeps"
FORBIDDEN = {"ray", "mlflow", "yaml"}
PURE = ["maskdm", "trainer"]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("sub", PURE)
def test_source_never_imports_ray_mlflow_or_yaml(sub):
    files = sorted((PACKAGE / sub).rglob("*.py"))
    if sub == "maskdm":
        assert files, "the method package must exist"
    offenders = {str(f.relative_to(PACKAGE)): imported_roots(f) & FORBIDDEN for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


@pytest.mark.parametrize("sub", [s for s in PURE if (PACKAGE / s).is_dir()])
def test_nothing_it_loads_of_ours_imports_them(sub):
    """Catches indirect imports through another module of ours. (timm itself loads yaml via huggingface_hub, so
    the check is on our modules' sources; ray and mlflow must not be loaded at all.)"""
    code = (
        f"import sys, maskdm_sweeps.{sub}; "
        "print([m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')]); "
        "print([m.__file__ for n, m in list(sys.modules.items()) if n.startswith('maskdm_sweeps') and m.__file__])"
    )
    heavy, ours = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert heavy == "[]"
    offenders = {f: imported_roots(Path(f)) & FORBIDDEN for f in ast.literal_eval(ours)}
    assert {f: m for f, m in offenders.items() if m} == {}


# ------------------------------------------------------------------------------------------------ import graph
def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of_ours(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of the file (deferred imports in functions too).

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` itself.
    """
    name, out = module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
                if node.level
                else node.module or ""
            )
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of_ours(path, set(files)) for name, path in files.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_circle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert (
        "maskdm_sweeps.sweep.runner" in graph["maskdm_sweeps.sweep.trainable"]
        or "maskdm_sweeps.sweep.trainable" in graph["maskdm_sweeps.sweep.runner"]
    )  # the graph holds real edges
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_and_plan_never_load_ray(command, tmp_path):
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    code = (
        "import sys; from maskdm_sweeps.cli import main; "
        f"code = main([{command!r}, {str(spec)!r}]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow'})); sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_validate_loads_neither_torch_nor_timm_nor_torchvision(tmp_path):
    # checking a YAML file needs pydantic and the configs' arithmetic, not the network: lazy package exports keep
    # `maskdm-sweep validate` to about a third of a second (it took 4.5 s while it imported timm and torch)
    spec = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
    heavy = {"torch", "timm", "torchvision", "ray", "mlflow", "sklearn", "pandas"}
    code = (
        "import sys; from maskdm_sweeps.cli import main; "
        f"code = main(['validate', {str(spec)!r}]); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r})); sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
