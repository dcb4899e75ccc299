"""Generated documentation: the spec field reference, CLI help, parquet columns and module table of the pages under
``docs/``, and the JSON Schema.

The pydantic models (``SweepSpec``, ``TrialConfig``), ``cli.build_parser()``, the results' column dtypes and the
package's module docstrings are the sources. It sits beside ``cli`` rather than inside ``sweepspec/``, since it reads
the CLI and the results package too::

    python -m maskdm_sweeps.docgen           # rewrite the pages' generated sections and the JSON Schema
    python -m maskdm_sweeps.docgen --check   # exit 1 naming what is stale (tests/test_docs.py does the same)

One module per concept: ``markdown`` (text and table helpers), ``spec_reference`` (the field reference and the JSON
Schema), ``columns`` (the results files' column tables), ``modules`` (``docs/design.md``'s module table) and
``readme`` (the CLI help, the marked sections of each page, ``--check`` and the writer).
"""

from .columns import CURVE_COLUMN_DOCS, TRIAL_COLUMN_DOCS, results_columns_markdown
from .modules import module_rows, module_table_markdown
from .readme import (
    DESCRIPTION,
    DESIGN,
    GENERATED,
    PAGES,
    README,
    REGENERATE,
    ROOT,
    SCHEMA_FILE,
    cli_help_markdown,
    main,
    render_page,
    section,
    sections_of,
    stale,
    write,
)
from .spec_reference import (
    Section,
    field_default_text,
    field_type_text,
    json_schema,
    json_schema_text,
    model_sections,
    spec_reference_markdown,
    spec_sections,
)

__all__ = [
    "CURVE_COLUMN_DOCS",
    "DESCRIPTION",
    "DESIGN",
    "GENERATED",
    "PAGES",
    "README",
    "REGENERATE",
    "ROOT",
    "SCHEMA_FILE",
    "TRIAL_COLUMN_DOCS",
    "Section",
    "cli_help_markdown",
    "field_default_text",
    "field_type_text",
    "json_schema",
    "json_schema_text",
    "main",
    "model_sections",
    "module_rows",
    "module_table_markdown",
    "render_page",
    "results_columns_markdown",
    "section",
    "sections_of",
    "spec_reference_markdown",
    "spec_sections",
    "stale",
    "write",
]
