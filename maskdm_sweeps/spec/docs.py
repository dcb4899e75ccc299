"""Generated documentation: the README's spec field reference, CLI help and parquet columns, and the JSON Schema.

The pydantic models (``SweepSpec``, ``TrialConfig``), ``cli.build_parser()`` and the results' column dtypes are the
sources; the README holds their rendering between ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers::

    python -m maskdm_sweeps.spec.docs           # rewrite README.md's generated sections and the JSON Schema
    python -m maskdm_sweeps.spec.docs --check   # exit 1 naming what is stale (tests/test_docs.py does the same)
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from .schema import SweepSpec

ROOT = Path(__file__).resolve().parents[2]
README = "README.md"
SCHEMA_FILE = "experiments/maskdm-sweep.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
HELP_WIDTH = 100  # argparse wraps to the terminal: a fixed width keeps the README's help text stable
REGENERATE = ".venv/bin/python -m maskdm_sweeps.spec.docs"


# ------------------------------------------------------------------------------------------------- JSON Schema
def json_schema() -> dict[str, Any]:
    """``SweepSpec``'s JSON Schema (validation mode) with its ``$schema`` dialect, for editors and validators."""
    return {"$schema": SCHEMA_DIALECT, **SweepSpec.model_json_schema()}


def json_schema_text() -> str:
    """The schema file's text: pretty, keys sorted, one trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------- markdown bits
def _md(text: str, cell: bool = True) -> str:
    """Markdown text on one line: ``<`` escaped where it would open an HTML tag (``<output_dir>``) outside code
    spans, and for a table ``cell`` also ``|``."""
    parts = re.split(r"(`+[^`]*`+)", " ".join(text.split()))
    out = "".join(p if p.startswith("`") else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", p) for p in parts)
    return out.replace("|", "\\|") if cell else out


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; every cell goes through :func:`_md`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


# ------------------------------------------------------------------------------------------------- field types
_SCALARS = {int: "int", float: "float", str: "string", bool: "bool", Path: "path", type(None): "null"}


def _is_model(tp: Any) -> bool:
    """Whether an annotation is a pydantic model class (a section of the spec)."""
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_args(tp: Any) -> tuple[Any, ...]:
    """The members of a ``Union``/``X | Y`` annotation (``()`` for anything else)."""
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else ()


def _type_text(tp: Any) -> str:
    """A short, readable name of an annotation: ``int``, ``one of: a, b``, ``list[int]``, ``float or null``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in args) if len(args) > 1 else f"`{args[0]}`"
    if _union_args(tp):
        present = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in present)
        return text + " or null" if len(present) < len(args) else text
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    if origin is dict:
        return f"map[{_type_text(args[0])}, {_type_text(args[1])}]"
    if origin is tuple:
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    if _is_model(tp):
        return "section"
    return _SCALARS.get(tp, "any" if tp is Any else getattr(tp, "__name__", str(tp)))


def _bounds_text(info: FieldInfo) -> str:
    """The numeric constraints of a field: ``>= 1``, ``> 0``, ``in [0, 1)``; ``""`` when there are none."""
    low = high = None
    for meta in info.metadata:
        if isinstance(meta, (annotated_types.Ge, annotated_types.Gt)):
            low = ("[", meta.ge) if isinstance(meta, annotated_types.Ge) else ("(", meta.gt)
        elif isinstance(meta, (annotated_types.Le, annotated_types.Lt)):
            high = ("]", meta.le) if isinstance(meta, annotated_types.Le) else (")", meta.lt)
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return (">= " if low[0] == "[" else "> ") + f"{low[1]:g}"
    if high:
        return ("<= " if high[0] == "]" else "< ") + f"{high[1]:g}"
    return ""


def field_type_text(info: FieldInfo) -> str:
    """A field's type with its bounds, e.g. ``int >= 1``, ``float in [0, 1)``, ``int >= 1 or null``."""
    text, bounds = _type_text(info.annotation), _bounds_text(info)
    if not bounds:
        return text
    if text.endswith(" or null"):
        return f"{text[: -len(' or null')]} {bounds} or null"
    return f"{text} {bounds}"


def field_default_text(info: FieldInfo) -> str:
    """A field's default as a YAML reader would write it (``required`` when there is none)."""
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default is PydanticUndefined else info.default
    value = to_jsonable_python(value)
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


# ------------------------------------------------------------------------------------------------- sections
@dataclass
class Section:
    """One table of the field reference: the fields of one model at one dotted path."""

    path: str
    title: str
    doc: str
    rows: list[list[str]] = field(default_factory=list)


def _section_models(tp: Any) -> list[type[BaseModel]] | None:
    """The models a field opens as sub-sections: one for a model, several for a union of models (the mask)."""
    if _is_model(tp):
        return [tp]
    members = _union_args(tp)
    if len(members) > 1 and all(_is_model(m) for m in members):
        return list(members)
    return None


def _variant_title(path: str, model: type[BaseModel]) -> str:
    """``base.mask`` (strategy: patch) for a member of a discriminated union."""
    tags = [(name, get_args(f.annotation)[0]) for name, f in model.model_fields.items()
            if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1]
    return f"`{path}` ({tags[0][0]}: {tags[0][1]})" if tags else f"`{path}` ({model.__name__})"


def model_sections(model: type[BaseModel], path: str, title: str, doc: str,
                   seen: dict[type, str] | None = None) -> list[Section]:
    """The sections of ``model`` at ``path`` and, depth-first, of every model nested in it.

    A model met a second time (``finetune.data`` is a ``data`` section) is one row that refers to the first.
    """
    seen = {} if seen is None else seen
    seen.setdefault(model, path)
    own = Section(path, title, doc)
    nested: list[Section] = []
    for name, info in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        models = _section_models(info.annotation)
        if models:
            for m in models:
                title_m = f"`{dotted}`" if len(models) == 1 else _variant_title(dotted, m)
                doc_m = " ".join(t for t in (info.description, _first_paragraph(m.__doc__)) if t)
                nested += model_sections(m, dotted, title_m, doc_m, seen)
            continue
        own.rows.append(_field_row(dotted, info, seen, nested))
    return [own, *nested]


def _field_row(dotted: str, info: FieldInfo, seen: dict[type, str], nested: list[Section]) -> list[str]:
    """One table row; a map of models (``sweep.search.space``) also opens a ``<key>`` sub-section."""
    tp = info.annotation
    type_text, description = field_type_text(info), info.description or ""
    optional = [m for m in _union_args(tp) if _is_model(m)]
    if optional and optional[0] in seen:
        type_text = f"section like `{seen[optional[0]]}`, or null"
    if get_origin(tp) is dict and _is_model(get_args(tp)[1]):
        value_model = get_args(tp)[1]
        type_text = f"map[string, section `{dotted}.<key>`]"
        nested += model_sections(value_model, f"{dotted}.<key>", f"`{dotted}.<key>`",
                                 _first_paragraph(value_model.__doc__), seen)
    return [f"`{dotted}`", type_text, field_default_text(info), description]


def spec_sections() -> list[Section]:
    """Every section of a sweep spec, top level first, in field order."""
    return model_sections(SweepSpec, "", "Top level", _first_paragraph(SweepSpec.__doc__))


def spec_reference_markdown() -> str:
    """The field reference: one table per section (dotted path, type, default, description)."""
    blocks = []
    for section in spec_sections():
        block = [f"#### {section.title}", "", _md(section.doc, cell=False)]
        if section.rows:
            block += ["", _table(["field", "type", "default", "description"], section.rows)]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)


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


# ------------------------------------------------------------------------------------------------- results columns
TRIAL_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "sweep": ("", "sweep name"),
    "trial_id": ("", "`t-` + a hash of every setting that affects the trial; the directory under `trials/`"),
    "arm": ("", "`baseline`, `patch r=0.5`, `block b=4 r=0.9` or `crop c=11`: the seeds of one arm average"),
    "label": ("", "the trial's axis values as text, e.g. `mask.rate=0.5 seed=1`"),
    "stage": ("", "`finetune`: a row describes the trial's last stage"),
    "status": ("", "`finished`, `stopped` (early stopping), `failed` or `incomplete` (killed, running, not resumed)"),
    "error": ("", "why a failed trial failed (the last line of Ray Tune's error.txt); null otherwise"),
    "mask_strategy": ("", "`patch`, `block` or `crop`; null for the baseline"),
    "mask_rate": ("fraction", "nominal mask rate of pre-training; NaN for the baseline and for crop"),
    "mask_block_size": ("patches", "block side (block strategy only)"),
    "mask_crop_size": ("patches", "visible window side (crop strategy only)"),
    "effective_mask_rate": ("fraction", "share of patches pre-training really dropped (counting rule); 0 for the "
                            "baseline"),
    "pretrain_steps": ("steps", "configured pre-training steps (0: baseline)"),
    "finetune_steps": ("steps", "configured fine-tuning steps"),
    "steps_done": ("steps", "fine-tuning steps completed"),
    "seed": ("", "trial seed"),
    "fid": ("FID", "final FID of fine-tuning (backend in `fid_backend`); NaN without one"),
    "fid_best": ("FID", "lowest FID over fine-tuning's evaluations"),
    "loss_final": ("", "final fine-tuning training loss (eps-MSE)"),
    "gpu_hours": ("GPU-hours", "`wall_seconds` x `gpus_per_trial` / 3600"),
    "gpus_per_trial": ("GPUs", "`resources.gpus` (counted as at least 1) x `resources.workers`: every GPU a trial holds"),
    "wall_seconds": ("s", "fine-tuning wall time plus this trial's share of its pre-training"),
    "finetune_wall_seconds": ("s", "fine-tuning wall time"),
    "pretrain_wall_seconds_share": ("s", "pre-training wall time / `pretrain_shared_by` (0 for the baseline)"),
    "mlflow_run_id": ("", "the fine-tuning stage's MLflow child run; null when not tracked"),
    "pretrain_trial_id": ("", "`pre-<pretrain_key>`; null for the baseline"),
    "pretrain_key": ("", "hash of the pre-training settings: `<output_dir>/_pretrain/<key>/`"),
    "pretrain_reused": ("", "the pre-training was finished by an earlier sweep and reused"),
    "pretrain_shared_by": ("trials", "how many trials the pre-training fed (0 for the baseline)"),
    "fid_backend": ("", "`inception` or `digits-classifier` (never compare across them)"),
    "fid_num_samples": ("samples", "samples per FID"),
    "fid_reference": ("", "reference set of the FID, `<dataset>:<key>`"),
}
CURVE_COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "trial_id": ("", "the trial (a shared pre-training's curve appears under every trial it fed)"),
    "stage": ("", "`pretrain` or `finetune` (steps restart at each stage)"),
    "step": ("steps", "optimizer step of the stage"),
    "metric": ("", "`train/loss`, `train/grad_norm`, `train/lr`, `train/images_per_second`, "
               "`train/effective_mask_rate`, `eval/fid`, `eval/fid_best`"),
    "value": ("", "the metric's value (FID for `eval/*`)"),
}


def _columns_table(columns: dict[str, str], docs: dict[str, tuple[str, str]], file: str) -> str:
    """A column table (name, dtype, unit, meaning); every column needs an entry in ``docs``."""
    missing = [c for c in columns if c not in docs]
    if missing:
        raise KeyError(f"{file} columns without a description in {__name__}: {missing}")
    rows = [[f"`{c}`", f"`{dtype}`", docs[c][0] or "-", docs[c][1]] for c, dtype in columns.items()]
    return _table(["column", "dtype", "unit", "meaning"], rows)


def results_columns_markdown() -> str:
    """The columns of ``trials.parquet`` and ``curves.parquet`` with their pandas dtypes, units and meanings."""
    from ..results import CURVE_COLUMNS, CURVES_FILE, TRIAL_COLUMNS, TRIALS_FILE

    return "\n\n".join([
        f"`{TRIALS_FILE}`, one row per trial (then one column per other swept key, dots become underscores):",
        _columns_table(TRIAL_COLUMNS, TRIAL_COLUMN_DOCS, TRIALS_FILE),
        f"`{CURVES_FILE}`, long format, one row per reported metric value:",
        _columns_table(CURVE_COLUMNS, CURVE_COLUMN_DOCS, CURVES_FILE),
    ])


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
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text, count=1)
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
    """``python -m maskdm_sweeps.spec.docs [--check] [--root DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m maskdm_sweeps.spec.docs", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
