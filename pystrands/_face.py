"""What the blocking and asyncio client faces share: the constructor, the default callbacks, the session."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ._adapter import FaceBackend
from ._dropped import dropped_sends_of
from ._parameters import ConnectionParameters
from ._session import Runtime, Session
from .backend import DefaultCallbacks
from .logbridge import bridge_to_stdlib

__all__ = ["Face"]

#: The IBackend adapter class of a face.
_Backend = TypeVar("_Backend", bound=FaceBackend)


class Face(ConnectionParameters, DefaultCallbacks, Generic[_Backend]):
    """A client face: documented parameters and callbacks, and one :class:`~pystrands._session.Session`."""

    #: The IBackend adapter class of this face.
    _backend_class: type[_Backend]
    #: Seconds a single connection attempt may take (name resolution and TCP connect).
    connect_timeout: float = 10.0

    def _init_state(self) -> None:
        bridge_to_stdlib()  # for stdlib logging users; a send may warn before connect()
        self._session = Session(self._runtime())

    def _runtime(self) -> Runtime:
        """The face's world: where its reactor runs, what futures it hands out."""
        raise NotImplementedError

    def _report_dropped_sends(self) -> None:
        """Once disconnected: log the count of dropped sends the throttled warning still holds back."""
        dropped_sends_of(self).flush()

    @property
    def connected(self) -> bool:
        """True while a TCP connection to the broker is open, and disconnect() was not called since."""
        return self._session.connected

    def _connect_args(self) -> tuple[Any, ...]:
        """What the session's connect() takes: the settings (checked now), the address, the attempt's timeout."""
        return self._settings(), self.host, self.port, self.connect_timeout
