"""Sphinx configuration: the README's guides and docs/*.md (MyST) plus the API reference (autodoc).

Build with ``make docs`` (warnings are errors); ``tests/docs/test_build.py`` does the same.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, whatever is installed
sys.path.insert(0, str(ROOT / "docs" / "_ext"))  # zope_interfaces: the IBackend-style interfaces

from pystrands import __version__  # noqa: E402

project = "PyStrands on Twisted"
author = "The PyStrands on Twisted developers"
copyright = "2026, The PyStrands on Twisted developers"
release = version = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "zope_interfaces"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

# The docstrings are reStructuredText: ``literal``, *emphasis*, :class:`Name` roles.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autoclass_content = "both"  # the class docstring and __init__'s

# Links such as docs/SECURITY.md in README.md (included by index.md) become links between pages.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"PyStrands on Twisted {release}"
