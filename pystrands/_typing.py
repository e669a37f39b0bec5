"""Types for the type checker only: what this library relies on that Twisted's interfaces split up.

Imported under ``TYPE_CHECKING``; nothing here runs in the library.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport

__all__ = ["IConnectedTransport"]


class IConnectedTransport(ITransport, IPushProducer, IConsumer):
    """A connected stream transport as the protocols here use it (after ``makeConnection``).

    Twisted's TCP, UNIX and TLS transports, and its test transports, all
    have these methods; its interfaces spread them over ``ITCPTransport``
    (``abortConnection``), ``IPushProducer`` (pausing reads) and
    ``IConsumer`` (registering a producer).
    """

    def abortConnection() -> None:
        """Close the connection at once, discarding what is not written yet."""
