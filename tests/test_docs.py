"""The README's generated sections and the JSON Schema are fresh; the schema validates the shipped specs and rejects
misspelt fields; the README's sections come in order; its pandas example runs as written."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from maskdm_sweeps.sweepspec import SweepSpec, load_spec
from maskdm_sweeps.docgen import (
    GENERATED, README, REGENERATE, SCHEMA_FILE, cli_help_markdown, json_schema_text, main, readme_section,
    render_readme, spec_sections,
)
from fake_sweep import build_sweep  # writes a finished sweep's files by hand: no training

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "experiments").glob("*.yaml"))
STALE = f"stale: run `{REGENERATE}` and commit the result"


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / README).read_text()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / SCHEMA_FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, data: dict) -> list[str]:
    return [e.message for e in validator.iter_errors(data)]


# ------------------------------------------------------------------------------------------------- freshness
@pytest.mark.parametrize("name", list(GENERATED))
def test_readme_generated_section_is_fresh(readme, name):
    assert readme_section(readme, name) == readme_section(render_readme(readme), name), f"README.md ({name}) {STALE}"


def test_schema_file_is_fresh():
    path = ROOT / SCHEMA_FILE
    assert path.exists() and path.read_text() == json_schema_text(), f"{SCHEMA_FILE} {STALE}"


def test_render_is_idempotent_and_keeps_other_markers(readme):
    once = render_readme(readme)
    assert render_readme(once) == once
    assert readme_section(once, "quickstart-table") == readme_section(readme, "quickstart-table")


def test_check_names_what_is_stale(tmp_path, readme, capsys):
    (tmp_path / "experiments").mkdir()
    broken = readme.replace("#### `base.data`", "#### `base.dataset`", 1)
    (tmp_path / README).write_text(broken)
    assert main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "README.md (spec-reference)" in err and SCHEMA_FILE in err and "cli-help" not in err
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert (tmp_path / SCHEMA_FILE).read_text() == json_schema_text()


def test_cli_help_ignores_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_help_markdown()
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_help_markdown() == narrow
    for command in ("validate", "plan", "run", "resume", "report", "sync", "ui", "train", "version"):
        assert f"$ maskdm-sweep {command} --help\nusage: maskdm-sweep {command} " in narrow


def test_reference_covers_every_field(readme):
    """Every leaf field has a row with type, default and a description; the mask variants have a section each."""
    rows = [row for s in spec_sections() for row in s.rows]
    assert all(len(r) == 4 and all(r[:3]) and r[3] for r in rows), [r for r in rows if not r[3]]
    paths = {r[0].strip("`") for r in rows}
    for path in ("name", "base.seed", "base.data.path", "base.mask.crop_size", "base.eval.fid_weights",
                 "base.finetune.data", "sweep.search.space.<key>.type", "sweep.scheduler.grace_period",
                 "resources.gpus", "tracking.mlflow_uri"):
        assert path in paths and f"`{path}`" in readme
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


@pytest.mark.parametrize("where, key", [((), "nmae"), (("base", "finetune"), "stpes"), (("sweep",), "seed"),
                                        (("base", "mask"), "block_size"), (("resources",), "gpu")])
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
ORDER = ["Two commands", "What the quickstart answers", "Writing a spec", "Command line", "Reading results", "Running on a Ray cluster", "Docker",
         "FID protocol", "Layout and flow"]


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


def test_readme_sections_in_order(readme):
    top = [(title, at) for level, title, at in _headings(readme) if level == 2]
    titles = [t for t, _ in top]
    assert [t for t in titles if t in ORDER] == ORDER, titles
    start = dict(top)

    def within(marker: str, section: str) -> bool:
        nxt = ORDER.index(section) + 1
        return marker in readme[start[section]:start[ORDER[nxt]] if nxt < len(ORDER) else len(readme)]

    assert titles[0] == "Two commands"  # the two commands come first, right after the introduction
    commands = readme[start["Two commands"]:start["What the quickstart answers"]]
    assert "make run" in commands and "make test" in commands
    for marker in ("<!-- BEGIN quickstart-table -->", "<!-- END quickstart-table -->"):
        assert within(marker, "What the quickstart answers"), marker
    for image in ("docs/quickstart_fid_vs_tflops.png", "docs/quickstart_samples.png"):
        assert within(f"]({image})", "What the quickstart answers") and (ROOT / image).is_file(), image
    assert within("<!-- BEGIN spec-reference -->", "Writing a spec")
    assert within("<!-- BEGIN cli-help -->", "Command line")
    assert within("<!-- example: pandas -->", "Reading results")
    assert within("<!-- BEGIN results-columns -->", "Reading results")
    assert within("make test-fast", "Layout and flow")


def _pandas_example(readme: str) -> str:
    match = re.search(r"<!-- example: pandas -->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert match, "README.md lost its <!-- example: pandas --> python block"
    return match.group(1)


def test_pandas_example_runs_as_written(readme, tmp_path, monkeypatch, capsys):
    code = _pandas_example(readme)
    assert len(code.strip().splitlines()) == 5, code
    sweep = re.search(r'load\("(results/[^"]+)"\)', code).group(1)
    # a finished sweep's files, written by hand; a finetune.lr axis stands for the quickstart's finetune.init_from
    build_sweep(tmp_path / "results", name=Path(sweep).name, lrs=(1e-4, 2e-4))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md <!-- example: pandas -->", "exec"), {})
    out = capsys.readouterr().out
    assert all(s in out for s in ("baseline", "patch r=0.5", "patch r=0.9", "finetune_lr", "mean", "std")), out
    assert (tmp_path / sweep / "trials.parquet").exists()
