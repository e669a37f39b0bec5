"""Free TCP ports for tests that must name a port before a process listens on it."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, never the same twice in one test run.

    The kernel may offer a port again as soon as the probe closes; two ports
    asked for in a row (a broker's WebSocket and backend ports) must differ.
    """
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
