"""A TCP server endpoint with ``SO_REUSEPORT``: several processes listen on one port (Linux).

Each ``--workers`` process of the broker listens through it on the same
WebSocket and backend ports; the kernel spreads new connections over them.
Twisted's ``listenTCP`` sets its options after making the socket and cannot
add ``SO_REUSEPORT`` before the bind, so the socket is made, bound and put
to listening here and handed to ``reactor.adoptStreamPort``.

As an endpoint string (registered by PyStrands' twisted plugin):
``pystrands-reuseport:8080:interface=127.0.0.1``, the ``tcp:`` syntax.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, execute
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "parse_reuseport", "reuseport_socket"]

#: Connections the kernel queues before they are accepted, as Twisted's ``tcp:`` endpoint.
BACKLOG = 50


def reuseport_socket(interface: str, port: int, alone: bool = False) -> socket.socket:
    """A TCP socket bound to ``(interface, port)`` with ``SO_REUSEPORT``, not yet listening.

    Raises ``CannotListenError`` (as ``listenTCP`` does) when the port is
    taken by a socket without ``SO_REUSEPORT`` or by another user; with
    ``alone`` (a supervisor, before its workers), also when any socket listens
    on it already: another ``--workers`` broker of this user, whose workers
    would silently share the port, and the clients, with this one's.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    if alone and port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart's TIME_WAIT is no listener
            try:
                probe.bind((interface, port))
            except OSError as exc:
                raise CannotListenError(interface, port, exc) from None  # type: ignore[no-untyped-call]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as listenTCP: no wait after a restart
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
    except OSError as exc:
        sock.close()
        raise CannotListenError(interface, port, exc) from None  # type: ignore[no-untyped-call]  # unannotated
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on ``interface:port`` with ``SO_REUSEPORT`` set before the bind."""

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = BACKLOG) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Bind, listen and adopt the socket; fails with ``CannotListenError`` as ``tcp:`` does."""
        return execute(self._listen, protocolFactory)

    def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        with reuseport_socket(self.interface, self.port) as sock:
            sock.listen(self.backlog)
            sock.setblocking(False)
            port: IListeningPort = self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            return port  # the reactor keeps a duplicate of the descriptor; this one closes here


def parse_reuseport(reactor: Any, port: object, interface: object = "", backlog: object = BACKLOG) -> ReusePortEndpoint:
    """The endpoint of ``pystrands-reuseport:PORT[:interface=ADDR][:backlog=N]`` (its parts as strings)."""
    try:
        return ReusePortEndpoint(reactor, int(str(port)), str(interface), int(str(backlog)))
    except ValueError:
        why = f"pystrands-reuseport needs a port number and a whole backlog, not {port!r}, {backlog!r}"
        raise ValueError(why) from None
