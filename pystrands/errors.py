"""Exceptions a caller of this library can see."""

from __future__ import annotations

__all__ = ["BrokerRefused", "NotConnectedError", "NotSupportedError", "ProtocolError", "SendBufferFull"]


class ProtocolError(ValueError):
    """A line from the network that is not a valid frame; says what is wrong."""


class NotConnectedError(ConnectionError):
    """A send was refused: no connection, and none is coming (stopped, or no reconnect)."""


class SendBufferFull(NotConnectedError):
    """A send was refused: the buffer of sends waiting for a reconnect is full."""


class NotSupportedError(Exception):
    """A request the broker does not announce in its ``hello`` frame (or no ``hello`` came): nothing was sent.

    ``feature`` names the request (``room_members``, ``disconnect_client``, ...).
    The reference Go broker announces none.
    """

    def __init__(self, feature: str, why: str = "it sent no hello listing it; the reference broker"
                                                 " supports none of the extensions") -> None:
        super().__init__(f"{feature}: the broker does not announce this feature ({why})")
        #: The request the broker does not support.
        self.feature = feature


class BrokerRefused(ValueError):
    """The broker answered a request with ``ok=false`` (unusable params, such as a bad close code).

    The message is the broker's reason.
    """

    def __init__(self, feature: str, reason: str) -> None:
        super().__init__(f"{feature} refused by the broker: {reason}")
        #: The request that was refused.
        self.feature = feature
        #: The broker's text.
        self.reason = reason
