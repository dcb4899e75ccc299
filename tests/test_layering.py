"""The method and the trainer stay free of ray, mlflow and yaml (DESIGN.md, "Boundaries")."""

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
    heavy, ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert heavy == "[]"
    offenders = {f: imported_roots(Path(f)) & FORBIDDEN for f in ast.literal_eval(ours)}
    assert {f: m for f, m in offenders.items() if m} == {}
