"""A pytest plugin for the run of pystrands 1.0.0's suite (``-p tests.compat.sandbox``): this checkout, loopback only.

It stops the run before any test unless ``pystrands`` is imported from this
checkout (not from the 1.0.0 source distribution), names that file at the
end of the report, and refuses, through an audit hook, any connection or name
lookup beyond the loopback interface.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest

#: The package under test: this checkout's.
EXPECTED = Path(__file__).resolve().parents[2] / "pystrands" / "__init__.py"
#: The start of the report's last line, which names the package under test.
HEADER = "pystrands under test: "
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: Any) -> bool:
    """True for a loopback address or name (None is the local host in getaddrinfo)."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def refuse_beyond_loopback(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: a PermissionError for a connect, sendto or getaddrinfo that would leave the host."""
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple):
        host = args[1][0]  # an (host, port, ...) address; a Unix socket's path stays on the host
    else:
        return
    if not is_loopback(host):
        raise PermissionError(f"the pystrands 1.0.0 suite may reach loopback only, not {host!r} ({event})")


def allow_loopback_only() -> None:
    """Install refuse_beyond_loopback for the rest of the process (an audit hook cannot be removed)."""
    sys.addaudithook(refuse_beyond_loopback)


def pytest_configure(config: pytest.Config) -> None:
    import pystrands

    found = Path(pystrands.__file__).resolve()
    if found != EXPECTED:
        raise pytest.UsageError(f"pystrands was imported from {found}, not this checkout's {EXPECTED}")
    allow_loopback_only()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import pystrands

    terminalreporter.write_line(HEADER + str(Path(pystrands.__file__).resolve()))
