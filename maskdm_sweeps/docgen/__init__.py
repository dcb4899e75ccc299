"""Generated documentation: the README's spec field reference, CLI help and parquet columns, and the JSON Schema.

The pydantic models (``SweepSpec``, ``TrialConfig``), ``cli.build_parser()`` and the results' column dtypes are the
sources. It sits beside ``cli`` rather than inside ``sweepspec/``, since it reads the CLI and the results package too::

    python -m maskdm_sweeps.docgen           # rewrite README.md's generated sections and the JSON Schema
    python -m maskdm_sweeps.docgen --check   # exit 1 naming what is stale (tests/test_docs.py does the same)

One module per concept: ``markdown`` (text and table helpers), ``spec_reference`` (the field reference and the JSON
Schema), ``columns`` (the results files' column tables) and ``readme`` (the CLI help, the marked README sections,
``--check`` and the writer).
"""

from .columns import CURVE_COLUMN_DOCS, TRIAL_COLUMN_DOCS, results_columns_markdown
from .readme import (DESCRIPTION, GENERATED, README, REGENERATE, ROOT, SCHEMA_FILE, cli_help_markdown, main,
                     readme_section, render_readme, stale, write)
from .spec_reference import (Section, field_default_text, field_type_text, json_schema, json_schema_text,
                             model_sections, spec_reference_markdown, spec_sections)

__all__ = [
    "CURVE_COLUMN_DOCS", "TRIAL_COLUMN_DOCS", "results_columns_markdown", "DESCRIPTION", "GENERATED", "README",
    "REGENERATE", "ROOT", "SCHEMA_FILE", "cli_help_markdown", "main", "readme_section", "render_readme", "stale",
    "write", "Section", "field_default_text", "field_type_text", "json_schema", "json_schema_text", "model_sections",
    "spec_reference_markdown", "spec_sections",
]
