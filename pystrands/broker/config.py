"""The broker's settings: one validated dataclass, and the command-line options that fill it.

The same :class:`Options` serve ``python -m pystrands server`` and
``twistd pystrands-broker``. As with the reference broker, the environment
variables ``PYSTRAND_WS_PORT``, ``PYSTRAND_TCP_PORT`` and
``PYSTRAND_QUEUE_SIZE`` take precedence over the flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from ..options import parse_numbers, settings_error
from ..settings import check_integer, check_number

__all__ = ["BrokerConfig", "ENVIRONMENT", "Options"]

#: Environment variable -> option it overrides.
ENVIRONMENT = {
    "PYSTRAND_WS_PORT": "ws-port",
    "PYSTRAND_TCP_PORT": "tcp-port",
    "PYSTRAND_QUEUE_SIZE": "queue-size",
}

MiB = 1024 * 1024


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the broker can be told; a nonsense value raises at construction."""

    #: WebSocket port (0: any free port).
    ws_port: int = 8080
    #: Interface of the WebSocket port ("": all).
    ws_interface: str = ""
    #: Backend TCP port (0: any free port).
    tcp_port: int = 8081
    #: Interface of the backend port; loopback only unless opened on purpose.
    tcp_interface: str = "127.0.0.1"
    #: Events kept while no backend is connected (0: none).
    queue_size: int = 1000
    #: Seconds a connection_request may wait for its response before HTTP 403.
    auth_timeout: float = 10.0
    #: Largest WebSocket message in bytes; a bigger one closes the client with 1009.
    max_message_size: int = 1 * MiB
    #: WebSocket clients (connected or handshaking) beyond which handshakes get HTTP 503.
    max_clients: int = 10_000
    #: When set, a backend's first frame must be ``auth`` with this token.
    backend_token: str | None = None
    #: A directory served at ``/`` beside ``/ws/``.
    static: str | None = None
    #: Seconds between heartbeats to each backend.
    heartbeat_interval: float = 15.0
    #: Seconds a peer may keep its socket unwritable before it is dropped.
    write_timeout: float = 5.0
    #: Longest line accepted from a backend, in bytes; longer lines are skipped.
    max_frame_size: int = 16 * MiB
    #: Characters queued to an unwritable WebSocket client before it is dropped.
    max_client_buffer: int = 8 * MiB
    #: Bytes queued to an unwritable backend before it is dropped.
    max_backend_buffer: int = 64 * MiB

    def __post_init__(self) -> None:
        check_integer("ws_port", self.ws_port, minimum=0, maximum=65535)
        check_integer("tcp_port", self.tcp_port, minimum=0, maximum=65535)
        check_integer("queue_size", self.queue_size, minimum=0)
        check_integer("max_message_size", self.max_message_size, minimum=1)
        check_integer("max_clients", self.max_clients, minimum=1)
        check_integer("max_frame_size", self.max_frame_size, minimum=64)
        check_integer("max_client_buffer", self.max_client_buffer, minimum=1)
        check_integer("max_backend_buffer", self.max_backend_buffer, minimum=1)
        for name in ("auth_timeout", "heartbeat_interval", "write_timeout"):
            check_number(name, getattr(self, name), minimum=0, inclusive=False)
        for name in ("ws_interface", "tcp_interface"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, not {type(getattr(self, name)).__name__}")
        if self.backend_token is not None and (not isinstance(self.backend_token, str)
                                               or not self.backend_token):
            raise ValueError("backend_token must be a non-empty str or None")
        if self.static is not None and not os.path.isdir(self.static):
            raise ValueError(f"static {self.static!r} is not a directory")

    @property
    def ws_endpoint(self) -> str:
        """Server endpoint string of the WebSocket port."""
        return _endpoint(self.ws_port, self.ws_interface)

    @property
    def backend_endpoint(self) -> str:
        """Server endpoint string of the backend port."""
        return _endpoint(self.tcp_port, self.tcp_interface)


def _endpoint(port: int, interface: str) -> str:
    if not interface:
        return f"tcp:{port}"
    return f"tcp:{port}:interface={quoteStringArgument(interface)}"


_NUMERIC_OPTIONS = {
    "ws-port": int,
    "tcp-port": int,
    "queue-size": int,
    "max-message-size": int,
    "max-clients": int,
    "auth-timeout": float,
}


class Options(usage.Options):
    """Command-line options of the broker (``python -m pystrands server``, ``twistd pystrands-broker``)."""

    synopsis = "[options]"
    defaults = BrokerConfig()

    optParameters = [
        ["ws-port", None, defaults.ws_port, "WebSocket port (env PYSTRAND_WS_PORT wins)."],
        ["tcp-port", None, defaults.tcp_port, "Backend TCP port (env PYSTRAND_TCP_PORT wins)."],
        ["queue-size", None, defaults.queue_size,
         "Events kept while no backend is connected; 0 disables (env PYSTRAND_QUEUE_SIZE wins)."],
        ["tcp-interface", None, defaults.tcp_interface,
         "Interface of the backend port; 0.0.0.0 opens it to the network."],
        ["ws-interface", None, None, "Interface of the WebSocket port (default: all)."],
        ["auth-timeout", None, defaults.auth_timeout,
         "Seconds to wait for a backend's answer to a handshake before HTTP 403."],
        ["max-message-size", None, defaults.max_message_size,
         "Largest WebSocket message in bytes (bigger: close code 1009)."],
        ["max-clients", None, defaults.max_clients, "Most WebSocket clients (beyond: HTTP 503)."],
        ["backend-token", None, None, "Backends must send this token in an auth frame first."],
        ["static", None, None, "Directory to serve at / beside /ws/."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        for variable, option in ENVIRONMENT.items():
            if self.environ.get(variable, "") != "":
                self[option] = self.environ[variable]
        label = lambda option: _source(option, self.environ)  # noqa: E731
        try:
            self["config"] = BrokerConfig(
                **parse_numbers(self, _NUMERIC_OPTIONS, label),
                tcp_interface=self["tcp-interface"],
                ws_interface=self["ws-interface"] or "",
                backend_token=self["backend-token"],
                static=self["static"],
            )
        except (TypeError, ValueError) as exc:
            raise settings_error(exc, label) from None


def _source(option: str, environ: Mapping[str, str]) -> str:
    """How to name an option in an error: its environment variable when that set it."""
    for variable, name in ENVIRONMENT.items():
        if name == option and environ.get(variable, "") != "":
            return variable
    return f"--{option}"

