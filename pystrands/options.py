"""Option values on the command line (``twistd pystrands``, ``python -m pystrands server``).

Both read numbers from strings and turn a settings check's error into a
one-line usage error that names the option as the user wrote it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.python import usage

__all__ = ["parse_number", "parse_numbers", "settings_error"]


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
