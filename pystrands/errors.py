"""Exceptions a caller of this library can see."""

from __future__ import annotations

__all__ = ["NotConnectedError", "ProtocolError", "SendBufferFull"]


class ProtocolError(ValueError):
    """A line from the network that is not a valid frame; says what is wrong."""


class NotConnectedError(ConnectionError):
    """A send was refused: no connection, and none is coming (stopped, or no reconnect)."""


class SendBufferFull(NotConnectedError):
    """A send was refused: the buffer of sends waiting for a reconnect is full."""
