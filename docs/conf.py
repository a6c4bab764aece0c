"""Sphinx configuration of the PRISM toolkit docs (``make docs``: ``sphinx-build -W --keep-going``).

Three pages are generated at build time, never written by hand:

- ``api/generated/`` from the docstrings: autosummary walks every module of the packages listed in
  ``api/index.md`` (one line each), so a renamed or split module needs no change to the docs;
- ``cli.md`` from the ``prism`` parser itself (``_ext/prism_cli_docs.py``): ``--help`` and the docs
  cannot drift;
- the study and performance pages include the Markdown tables the study and the benchmarks write.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
# ``python -m prism_cli`` runs the command on import: autosummary imports every module it lists,
# so that one is stood in for by an empty module (the template leaves ``__main__`` modules out).
sys.modules.setdefault("prism_cli.__main__", types.ModuleType("prism_cli.__main__"))

project = "PRISM toolkit"
author = "PRISM toolkit contributors"
copyright = "2026, " + author

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "prism_cli_docs",
    "prism_api_refs",
    "prism_docstrings",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Type hints are shown as written; torch/pandas/numpy are not cross-referenced (no intersphinx: the
# docs build offline), and nitpicky stays off. Broken links to *our* objects are still errors:
# prism_api_refs warns about every unresolved prism_* reference outside the API pages.
nitpicky = False
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = "PRISM toolkit"
html_static_path: list[str] = []
