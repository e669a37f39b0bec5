"""``.. zope-interface:: module.IName``: a zope.interface Interface in the API reference.

autodoc documents classes and functions; an Interface is neither (its
methods are zope ``Method`` descriptions, its attributes ``Attribute``
objects), so this directive writes the reST for one itself: the
interface's docstring, then each attribute and method in the order the
interface declares them, with the method's signature.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from zope.interface.interface import Method


def _indented(text: str | None, prefix: str) -> list[str]:
    return [prefix + line if line else "" for line in inspect.cleandoc(text or "").splitlines()]


class ZopeInterface(SphinxDirective):
    """Document the Interface named by the one argument (``module.Name``)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """The nodes of the interface's reST, parsed in place of the directive."""
        module_name, _, name = self.arguments[0].rpartition(".")
        interface = getattr(importlib.import_module(module_name), name)
        lines = [f".. py:class:: {name}", f"   :module: {module_name}", ""]
        bases = [base for base in interface.__bases__ if base.__identifier__ != "zope.interface.Interface"]
        if bases:
            lines += ["   Extends " + ", ".join(f":class:`{base.__identifier__}`" for base in bases) + ".", ""]
        lines += [*_indented(interface.__doc__, "   "), ""]
        for member, description in interface.namesAndDescriptions():
            if isinstance(description, Method):
                lines += [f"   .. py:method:: {member}{description.getSignatureString()}", ""]
            else:
                lines += [f"   .. py:attribute:: {member}", ""]
            lines += [*_indented(description.getDoc(), "      "), ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.arguments[0]), self.content_offset, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    """Register the directive (Sphinx calls this for each extension)."""
    app.add_directive("zope-interface", ZopeInterface)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
