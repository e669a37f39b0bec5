"""What is installed: this distribution's name and version line.

``pystrands.__version__`` is the one place of the version (``setup.cfg``
reads it with ``attr:``); everything that prints it goes through
:func:`version_line`.
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "version_line"]

#: The name this package is installed under (``pip install pystrands-twisted``).
DISTRIBUTION = "pystrands-twisted"


def version_line() -> str:
    """``pystrands-twisted <version>``: what every ``--version`` prints."""
    from . import __version__  # read late: this module may load while pystrands/__init__ runs

    return f"{DISTRIBUTION} {__version__}"
