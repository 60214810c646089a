"""Sphinx configuration of the art-gifd documentation (builds offline: no intersphinx, no downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the working tree's package even when it is not installed in the running environment.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_gifd import __version__

project = "art-gifd"
author = "art-gifd developers"
copyright = "art-gifd developers"
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown pages: ::: fences for admonitions, and anchors for headings down to level 3 (page.md#some-heading).
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# API reference: docstrings are reST field lists (:param x: / :return: / :raises:); __init__ holds the parameters.
autoclass_content = "both"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"art-gifd {release}"
