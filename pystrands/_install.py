"""What is installed: this distribution's name and version, and whether its files are its own.

``pystrands.__version__`` is the one place of the version (``setup.cfg``
reads it with ``attr:``); everything that prints it goes through
:func:`version_line`.

The public ``pystrands`` 1.0.0 package installs the same import name, and
pip lets the one installed last overwrite the other's files without a word.
Importing this module refuses such a mixed ``pystrands/`` folder with an
``ImportError`` that says how to repair it (:func:`check_install`).
``pystrands/__init__.py`` imports it first of all, and this package's own
modules import it too (``pystrands.settings``, which every entry point
loads), so it also objects when the ``__init__.py`` that ran is not ours.
When the public package was installed last, a bare ``import pystrands`` runs
its ``__init__.py`` and nothing of ours, so the error comes only with the
first of our own modules.

The check reads the ``RECORD`` of each ``*.dist-info`` folder beside the
package (where a wheel installs it) and imports ``importlib.metadata`` only
to describe a conflict it found: loading this module costs about 0.6 ms in a
fresh install (13 distributions; ``import pystrands`` takes about 150 ms),
about 2 ms beside 90 distributions.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

__all__ = ["DISTRIBUTION", "REPAIR", "check_install", "version_line"]

#: The name this package is installed under (``pip install pystrands-twisted``).
DISTRIBUTION = "pystrands-twisted"
#: What to run when another distribution's files are mixed into ours.
REPAIR = "pip uninstall pystrands pystrands-twisted && pip install pystrands-twisted"

_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))


def version_line() -> str:
    """``pystrands-twisted <version>``: what every ``--version`` prints."""
    from . import __version__

    return f"{DISTRIBUTION} {__version__}"


def check_install(package: ModuleType | None) -> None:
    """Raise ``ImportError`` unless the ``pystrands/`` folder holds this distribution's files only.

    ``package`` is the ``pystrands`` module whose ``__init__.py`` ran; ours
    sets ``__version__`` before it imports this module (the public 1.0.0
    package has none).
    """
    others = _other_distributions(os.path.dirname(_PACKAGE_FOLDER))
    if others:
        raise ImportError(_describe(others))
    if getattr(package, "__version__", None) is None:
        raise ImportError(
            f"{os.path.join(_PACKAGE_FOLDER, '__init__.py')} is not {DISTRIBUTION}'s: another package"
            f" with the import name 'pystrands' (the public pystrands 1.0.0) overwrote or removed it."
            f" Repair with: {REPAIR}")


def _other_distributions(root: str) -> list[str]:
    """The metadata folders in ``root`` of distributions other than ours that list files under ``pystrands/``."""
    found: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    for entry in entries:
        name, _, kind = entry.name.rpartition(".")
        if kind == "dist-info":
            listing, prefix = "RECORD", b"pystrands/"  # paths relative to root
        elif kind == "egg-info":
            listing, prefix = "installed-files.txt", b"../pystrands/"  # relative to the egg-info folder
        else:
            continue
        project = name.partition("-")[0].replace(".", "_").lower()
        if project == "pystrands_twisted":
            continue
        try:
            with open(os.path.join(entry.path, listing), "rb") as file:  # bytes: no decoding of big files
                text = file.read()
        except OSError:
            continue
        if text.startswith(prefix) or b"\n" + prefix in text:
            found.append(entry.path)
    return found


def _describe(others: list[str]) -> str:
    """The error for a folder shared with the distributions whose metadata is in ``others``."""
    from importlib.metadata import Distribution

    def named(path: str) -> str:
        try:
            distribution = Distribution.at(path)
            return f"{distribution.metadata['Name']} {distribution.version}"
        except (OSError, KeyError, TypeError, ValueError):  # unreadable: the folder's name says whose
            return os.path.basename(path)

    root = os.path.dirname(_PACKAGE_FOLDER)
    ours = [named(os.path.join(root, name)) for name in sorted(os.listdir(root))
            if name.startswith("pystrands_twisted-") and name.endswith(".dist-info")]
    theirs = ", ".join(named(path) for path in sorted(others))
    return (f"{_PACKAGE_FOLDER} holds files of {(ours or [DISTRIBUTION])[0]} and of {theirs}: both"
            f" install the import name 'pystrands', so the one installed last overwrote the other's files,"
            f" and uninstalling either would remove files the other needs. {DISTRIBUTION} replaces the"
            f" public pystrands package (same API). Repair with: {REPAIR}")


check_install(sys.modules.get(__name__.rpartition(".")[0]))
