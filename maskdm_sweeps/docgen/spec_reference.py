"""The spec's field reference (one markdown table per section of ``SweepSpec``) and its JSON Schema.

Both are rendered from the pydantic models alone: each field's annotation, bounds, default and description.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from ..sweepspec.schema import SweepSpec
from .markdown import first_paragraph, md_table, md_text

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# ------------------------------------------------------------------------------------------------- JSON Schema
def json_schema() -> dict[str, Any]:
    """``SweepSpec``'s JSON Schema (validation mode) with its ``$schema`` dialect, for editors and validators."""
    return {"$schema": SCHEMA_DIALECT, **SweepSpec.model_json_schema()}


def json_schema_text() -> str:
    """The schema file's text: pretty, keys sorted, one trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
    value = info.get_default(call_default_factory=True)
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
    tags = [
        (name, get_args(f.annotation)[0])
        for name, f in model.model_fields.items()
        if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1
    ]
    return f"`{path}` ({tags[0][0]}: {tags[0][1]})" if tags else f"`{path}` ({model.__name__})"


def model_sections(
    model: type[BaseModel], path: str, title: str, doc: str, seen: dict[type, str] | None = None
) -> list[Section]:
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
                doc_m = " ".join(t for t in (info.description, first_paragraph(m.__doc__)) if t)
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
        nested += model_sections(
            value_model, f"{dotted}.<key>", f"`{dotted}.<key>`", first_paragraph(value_model.__doc__), seen
        )
    return [f"`{dotted}`", type_text, field_default_text(info), description]


def spec_sections() -> list[Section]:
    """Every section of a sweep spec, top level first, in field order."""
    return model_sections(SweepSpec, "", "Top level", first_paragraph(SweepSpec.__doc__))


def spec_reference_markdown() -> str:
    """The field reference: one table per section (dotted path, type, default, description)."""
    blocks = []
    for section in spec_sections():
        block = [f"#### {section.title}", "", md_text(section.doc, cell=False)]
        if section.rows:
            block += ["", md_table(["field", "type", "default", "description"], section.rows)]
        blocks.append("\n".join(block))
    return "\n\n".join(blocks)
