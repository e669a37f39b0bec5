"""Option values on the command line (``twistd pystrands``, ``python -m pystrands server``).

Both read numbers from strings and turn a settings check's error into a
one-line usage error that names the option as the user wrote it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from twisted.python import usage

from ._install import version_line

__all__ = ["PackageOptions", "parse_number", "parse_numbers", "settings_error"]


class PackageOptions(usage.Options):
    """The base of this package's command-line options: ``--version`` prints its version.

    ``usage.Options.opt_version`` prints Twisted's; ``twistd pystrands``,
    ``twistd pystrands-broker`` and ``python -m pystrands server`` print
    ``pystrands-twisted <version>`` instead.
    """

    def opt_version(self) -> NoReturn:
        """Print the pystrands-twisted version and exit."""
        print(version_line())
        sys.exit(0)


def parse_number(label: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int or float); a UsageError naming ``label`` if it is not one."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    try:
        return kind(str(value).strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise usage.UsageError(f"{label} {str(value)!r} is not {what}") from None


def parse_numbers(options: Mapping[str, Any], kinds: Mapping[str, type],
                  label: Callable[[str], str]) -> dict[str, Any]:
    """The options named in ``kinds`` parsed, as keywords (``max-clients`` -> ``max_clients``)."""
    return {option.replace("-", "_"): parse_number(label(option), options[option], kind)
            for option, kind in kinds.items()}


def settings_error(exc: Exception, label: Callable[[str], str]) -> usage.UsageError:
    """A settings check's error (it starts with the field's name) reworded with ``label(option)``."""
    name, _, why = str(exc).partition(" ")
    return usage.UsageError(f"{label(name.replace('_', '-'))} {why}")
