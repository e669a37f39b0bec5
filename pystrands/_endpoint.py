"""How a face reaches the broker's address: name resolution, then TCP to each address in turn.

:class:`BrokerEndpoint` is the client endpoint every face connects through;
:class:`LoopResolver` is the name resolver of a reactor bound to someone
else's asyncio loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from zope.interface import implementer

__all__ = ["BrokerEndpoint", "LoopResolver"]


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects a name resolution's addresses into a Deferred."""

    def __init__(self) -> None:
        self.found: list[IPv4Address | IPv6Address] = []
        self.done: Deferred[list[IPv4Address | IPv6Address]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.found.append(cast("IPv4Address | IPv6Address", address))  # what name resolvers give

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


@implementer(IStreamClientEndpoint)
class BrokerEndpoint:
    """TCP to ``host:port``: each address the reactor's name resolver gives, tried in turn.

    What ``HostnameEndpoint`` does, minus its ``LoopingCall``, whose
    constructor imports (and so installs) the global reactor: a private
    reactor must leave the global one to the application.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect ``factory``; cancelling stops the lookup or attempt under way."""
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        addresses = _Addresses()
        self.reactor.nameResolver.resolveHostName(addresses, self.host, self.port)
        found = await addresses.done.addTimeout(self.timeout, self.reactor)
        if not found:
            raise DNSLookupError(f"no address for {self.host!r}")
        error: ConnectError | None = None
        for address in found:
            kind = TCP6ClientEndpoint if isinstance(address, IPv6Address) else TCP4ClientEndpoint
            try:
                return await kind(self.reactor, address.host, self.port, self.timeout).connect(factory)
            except ConnectError as exc:
                error = exc
        assert error is not None  # there was an address, and connecting to each failed
        raise error


def _ip_literal(host: str, port: int, family: int, kind: int) -> list[tuple[Any, ...]] | None:
    """getaddrinfo's answer for an IP address, without a lookup (so without a thread); else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    found = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    if family not in (socket.AF_UNSPEC, found):
        return []
    sockaddr = (host, port, 0, 0) if found == socket.AF_INET6 else (host, port)
    return [(found, kind, 0, "", sockaddr)]


@implementer(IHostResolution)
class _Resolution:
    """One name lookup in progress."""

    def __init__(self, name: str, task: asyncio.Future[Any]) -> None:
        self.name = name
        self._task = task

    def cancel(self) -> None:
        self._task.cancel()


@implementer(IHostnameResolver)
class LoopResolver:
    """Resolves names with the asyncio loop's getaddrinfo.

    Twisted's default resolver waits for a thread pool that only starts when
    the reactor is ``run()``; a reactor bound to someone else's loop never is.
    """

    _FAMILIES: ClassVar[dict[frozenset[type[IAddress]] | None, int]] = {
        None: socket.AF_UNSPEC,
        frozenset([IPv4Address]): socket.AF_INET,
        frozenset([IPv6Address]): socket.AF_INET6,
    }

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Look ``hostName`` up with the loop's getaddrinfo (an IP literal at once, without a thread)."""
        family = self._FAMILIES.get(None if addressTypes is None else frozenset(addressTypes),
                                    socket.AF_UNSPEC)
        semantics: Literal["TCP", "UDP"] = "TCP" if transportSemantics == "TCP" else "UDP"
        kind = socket.SOCK_STREAM if semantics == "TCP" else socket.SOCK_DGRAM
        lookup = self.loop.create_future()
        literal = _ip_literal(hostName, portNumber, family, kind)
        if literal is not None:
            lookup.set_result(literal)
        else:
            lookup = asyncio.ensure_future(
                self.loop.getaddrinfo(hostName, portNumber, family=family, type=kind), loop=self.loop)
        resolution = _Resolution(hostName, lookup)
        resolutionReceiver.resolutionBegan(resolution)

        def done(lookup: asyncio.Future[Any]) -> None:
            names = [] if lookup.cancelled() or lookup.exception() is not None else lookup.result()
            for found_family, _, _, _, address in names:
                make = IPv6Address if found_family == socket.AF_INET6 else IPv4Address
                resolutionReceiver.addressResolved(make(semantics, *address))
            resolutionReceiver.resolutionComplete()

        lookup.add_done_callback(done)
        return resolution
