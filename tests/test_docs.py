"""The generated sections of the docs (spec reference, --help, results columns, design.md's module table) and the
JSON Schema are fresh; the schema validates the shipped specs and rejects misspelt fields; the README is a short front
door whose sections come in order and link every page; the pandas example runs as written."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from fake_sweep import build_sweep  # writes a finished sweep's files by hand: no training
from maskdm_sweeps.docgen import (
    DESIGN,
    GENERATED,
    PAGES,
    README,
    REGENERATE,
    SCHEMA_FILE,
    cli_help_markdown,
    json_schema_text,
    main,
    module_rows,
    render_page,
    section,
    spec_sections,
)
from maskdm_sweeps.sweepspec import SweepSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "experiments").glob("*.yaml"))
STALE = f"stale: run `{REGENERATE}` and commit the result"


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / README).read_text()


def page(name: str) -> str:
    """The text of the page that holds generated section ``name``."""
    return (ROOT / PAGES[name]).read_text()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / SCHEMA_FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, data: dict) -> list[str]:
    return [e.message for e in validator.iter_errors(data)]


# ------------------------------------------------------------------------------------------------- freshness
@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_section_is_fresh(name):
    text = page(name)
    assert section(text, name) == section(render_page(text, PAGES[name]), name), f"{PAGES[name]} ({name}) {STALE}"


def test_schema_file_is_fresh():
    path = ROOT / SCHEMA_FILE
    assert path.exists() and path.read_text() == json_schema_text(), f"{SCHEMA_FILE} {STALE}"


@pytest.mark.parametrize("where", sorted(set(PAGES.values())))
def test_render_is_idempotent(where):
    once = render_page((ROOT / where).read_text(), where)
    assert render_page(once, where) == once


def test_the_readme_is_not_generated_and_keeps_its_quickstart_table(readme):
    assert render_page(readme, README) == readme
    assert section(readme, "quickstart-table")


def _copy_pages(root: Path) -> None:
    for where in set(PAGES.values()):
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        (root / where).write_text((ROOT / where).read_text())
    (root / "experiments").mkdir()


def test_check_names_what_is_stale(tmp_path, capsys):
    _copy_pages(tmp_path)
    where = tmp_path / PAGES["spec-reference"]
    where.write_text(where.read_text().replace("#### `base.data`", "#### `base.dataset`", 1))
    assert main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{PAGES['spec-reference']} (spec-reference)" in err and SCHEMA_FILE in err and "cli-help" not in err
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert (tmp_path / SCHEMA_FILE).read_text() == json_schema_text()


def test_a_module_added_moved_or_removed_makes_the_module_table_stale(tmp_path, capsys):
    _copy_pages(tmp_path)
    design = tmp_path / DESIGN
    rows = design.read_text().splitlines()
    design.write_text("\n".join(r for r in rows if not r.startswith("| `sweep/lock.py` |")) + "\n")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert f"{DESIGN} (module-table)" in capsys.readouterr().err
    assert main(["--root", str(tmp_path)]) == 0
    assert "| `sweep/lock.py` | One driver per sweep directory" in design.read_text()


def test_module_table_lists_every_module_by_its_docstring(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The package."""\n')
    (pkg / "zeta.py").write_text('"""Zeta: ``z`` and :class:`Z`.\n\nMore, not shown."""\n')
    (pkg / "sub" / "__init__.py").write_text('"""A subpackage with a | in it."""\n')
    (pkg / "sub" / "alpha.py").write_text('"""Alpha, a\nwrapped line."""\nX = 1\n')
    assert module_rows(pkg) == [
        ["`zeta.py`", "Zeta: `z` and `Z`."],
        ["`sub/`", "A subpackage with a | in it."],
        ["`sub/alpha.py`", "Alpha, a wrapped line."],
    ]
    (pkg / "sub" / "beta.py").write_text("X = 2\n")
    with pytest.raises(ValueError, match=r"beta\.py has no module docstring"):
        module_rows(pkg)
    table = (ROOT / DESIGN).read_text()
    for module in ("cli.py", "tracking/ui.py", "docgen/modules.py", "maskdm/model.py", "sweep/"):
        assert f"| `{module}` |" in table, module


def test_cli_help_ignores_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_help_markdown()
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_help_markdown() == narrow
    for command in ("validate", "plan", "run", "resume", "report", "sync", "ui", "train", "version"):
        assert f"$ maskdm-sweep {command} --help\nusage: maskdm-sweep {command} " in narrow


def test_reference_covers_every_field():
    """Every leaf field has a row with type, default and a description; the mask variants have a section each."""
    rows = [row for s in spec_sections() for row in s.rows]
    assert all(len(r) == 4 and all(r[:3]) and r[3] for r in rows), [r for r in rows if not r[3]]
    paths = {r[0].strip("`") for r in rows}
    for path in (
        "name",
        "base.seed",
        "base.data.path",
        "base.mask.crop_size",
        "base.eval.fid_weights",
        "base.finetune.data",
        "sweep.search.space.<key>.type",
        "sweep.scheduler.grace_period",
        "resources.gpus",
        "tracking.mlflow_uri",
    ):
        assert path in paths and f"`{path}`" in page("spec-reference")
    assert {s.title for s in spec_sections()} >= {f"`base.mask` (strategy: {m})" for m in ("patch", "block", "crop")}


# ------------------------------------------------------------------------------------------------- the schema
def test_schema_top_level_is_the_spec(validator):
    assert set(validator.schema["properties"]) == set(SweepSpec.model_fields)
    assert validator.schema["additionalProperties"] is False
    assert set(validator.schema["required"]) == {"name", "base"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_schema_accepts_every_shipped_spec(validator, path):
    assert _errors(validator, yaml.safe_load(path.read_text())) == []
    load_spec(path, check_paths=False)  # and pydantic agrees


@pytest.mark.parametrize(
    "where, key",
    [
        ((), "nmae"),
        (("base", "finetune"), "stpes"),
        (("sweep",), "seed"),
        (("base", "mask"), "block_size"),
        (("resources",), "gpu"),
    ],
)
def test_schema_rejects_a_misspelt_field(validator, where, key):
    data = copy.deepcopy(yaml.safe_load((ROOT / "experiments" / "mask_rate.yaml").read_text()))
    node = data
    for part in where:
        node = node.setdefault(part, {})
    node[key] = 1  # block_size is a field of block masks, not of this patch mask
    assert _errors(validator, data), f"{'.'.join(where + (key,))} was accepted"
    with pytest.raises(ValidationError):
        SweepSpec.model_validate(data, context={"check_paths": False})


# ------------------------------------------------------------------------------------------------- the README
ORDER = [
    "Two commands",
    "What the quickstart answers",
    "A spec in short",
    "Fewer seeds where the answer is already clear",
    "Looking at a sweep",
    "Documentation",
]
README_MAX_LINES = 250  # a front door: the reference lives in docs/
LINKED = [
    "docs/specs.md",
    "docs/spec-reference.md",
    "docs/cli.md",
    "docs/results.md",
    "docs/cluster.md",
    "docs/fid.md",
    "docs/reliability.md",
    "docs/development.md",
    "docs/design.md",
    "docs/method.md",
    "benchmarks/README.md",
]


def _headings(text: str) -> list[tuple[int, str, int]]:
    """(level, title, offset) of every markdown heading outside fenced code blocks."""
    out, fenced, offset = [], False, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+)", line)):
            out.append((len(m.group(1)), m.group(2).strip(), offset))
        offset += len(line)
    return out


def test_readme_is_a_short_front_door_linking_every_page(readme):
    assert len(readme.splitlines()) <= README_MAX_LINES
    top = [(title, at) for level, title, at in _headings(readme) if level == 2]
    titles = [t for t, _ in top]
    assert titles == ORDER, titles  # the two commands come first, right after the introduction
    start = dict(top)

    def within(marker: str, part: str) -> bool:
        nxt = ORDER.index(part) + 1
        return marker in readme[start[part] : start[ORDER[nxt]] if nxt < len(ORDER) else len(readme)]

    commands = readme[start["Two commands"] : start["What the quickstart answers"]]
    assert "make run" in commands and "make test" in commands
    for marker in ("<!-- BEGIN quickstart-table -->", "<!-- END quickstart-table -->"):
        assert within(marker, "What the quickstart answers"), marker
    for image in ("docs/quickstart_fid_vs_tflops.png", "docs/quickstart_samples.png"):
        assert within(f"]({image})", "What the quickstart answers") and (ROOT / image).is_file(), image
    assert within("```yaml\nname: mask_rate", "A spec in short")
    for target in LINKED:
        assert within(f"]({target})", "Documentation") and (ROOT / target).is_file(), target


def test_each_page_holds_its_generated_sections_and_examples():
    for name, where in PAGES.items():
        assert f"<!-- BEGIN {name} -->" in (ROOT / where).read_text(), (name, where)
    assert "<!-- example: pandas -->" in page("results-columns")
    assert "make test-fast" in (ROOT / "docs" / "development.md").read_text()
    for where in ("docs/specs.md", "docs/cluster.md", "docs/fid.md", "docs/reliability.md"):
        assert _headings((ROOT / where).read_text())[0][0] == 1, where  # each page opens with its title


def _pandas_example(text: str) -> str:
    match = re.search(r"<!-- example: pandas -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"{PAGES['results-columns']} lost its <!-- example: pandas --> python block"
    return match.group(1)


def test_pandas_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = _pandas_example(page("results-columns"))
    assert len(code.strip().splitlines()) == 5, code
    sweep = re.search(r'load\("(results/[^"]+)"\)', code).group(1)
    # a finished sweep's files, written by hand; a finetune.lr axis stands for the quickstart's finetune.init_from
    build_sweep(tmp_path / "results", name=Path(sweep).name, lrs=(1e-4, 2e-4))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{PAGES['results-columns']} <!-- example: pandas -->", "exec"), {})
    out = capsys.readouterr().out
    assert all(s in out for s in ("baseline", "patch r=0.5", "patch r=0.9", "finetune_lr", "mean", "std")), out
    assert (tmp_path / sweep / "trials.parquet").exists()
