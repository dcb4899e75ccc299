"""``python -m maskdm_sweeps.docgen [--check]``: rewrite (or check) the docs' generated sections and the schema."""

import sys

from .readme import main

sys.exit(main())
