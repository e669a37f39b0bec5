"""Which WebSocket clients exist, and which rooms each is in: the broker's one membership store.

:class:`Membership` is the small interface the router uses; :class:`Rooms`
keeps it in this process. A cluster can back the same interface with Redis
later without the router changing: nothing else in the broker holds
membership (the clients' cached contexts are rebuilt from what these
methods return).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["Membership", "Rooms"]

_Client = TypeVar("_Client")


class Membership(Protocol[_Client]):
    """Clients by id and rooms by id; a client may be in several rooms, or in none.

    A client id is reserved from the handshake's acceptance to the client's
    disconnection. A room exists while it has members. A client's rooms are
    listed in the order it joined them.
    """

    def __len__(self) -> int: ...

    def claimed(self) -> int:
        """Client ids in use: the connected clients and those accepted but not yet upgraded."""

    def reserve(self, client_id: str) -> bool:
        """Claim ``client_id`` for a handshake under way; False if it is taken."""

    def release(self, client_id: str) -> None:
        """Give back a reserved id whose handshake did not complete."""

    def add(self, client_id: str, room_id: str, client: _Client) -> None:
        """Connect a client (its id reserved before) and put it in its first room."""

    def remove(self, client_id: str) -> None:
        """Forget a client and take it out of every room it is in."""

    def join(self, client_id: str, room_id: str) -> list[str] | None:
        """Put a connected client in a room (again is fine); its rooms now, or None if not connected."""

    def leave(self, client_id: str, room_id: str) -> list[str] | None:
        """Take a connected client out of a room (not in it is fine); its rooms now, or None if not connected."""

    def rooms_of(self, client_id: str) -> list[str]:
        """The rooms a client is in, in the order it joined them ([] if not connected)."""

    def client(self, client_id: str) -> _Client | None:
        """The connected client with this id, or None."""

    def members(self, room_id: str) -> list[_Client]:
        """The clients of a room, each once (a copy: sending may remove clients)."""

    def everyone(self) -> list[_Client]:
        """Every connected client, each once (a copy)."""


class Rooms(Generic[_Client]):
    """:class:`Membership` in this process's memory."""

    def __init__(self) -> None:
        self._reserved: set[str] = set()
        self._clients: dict[str, _Client] = {}
        self._rooms: dict[str, dict[str, _Client]] = {}
        #: Each connected client's rooms, in join order (dicts keep insertion order).
        self._joined: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def claimed(self) -> int:
        """Client ids in use: the connected clients and those accepted but not yet upgraded."""
        return len(self._reserved)

    def reserve(self, client_id: str) -> bool:
        """Claim ``client_id`` for a handshake under way; False if it is taken."""
        if client_id in self._reserved:
            return False
        self._reserved.add(client_id)
        return True

    def release(self, client_id: str) -> None:
        """Give back a reserved id whose handshake did not complete."""
        self._reserved.discard(client_id)

    def add(self, client_id: str, room_id: str, client: _Client) -> None:
        """Connect a client (its id reserved before) and put it in its first room."""
        self._clients[client_id] = client
        self._joined[client_id] = {room_id: None}
        self._rooms.setdefault(room_id, {})[client_id] = client

    def remove(self, client_id: str) -> None:
        """Forget a client and take it out of every room it is in; empty rooms go."""
        self._reserved.discard(client_id)
        self._clients.pop(client_id, None)
        for room_id in self._joined.pop(client_id, ()):
            self._drop_member(room_id, client_id)

    def join(self, client_id: str, room_id: str) -> list[str] | None:
        """Put a connected client in a room (again is fine); its rooms now, or None if not connected."""
        client = self._clients.get(client_id)
        if client is None:
            return None
        joined = self._joined[client_id]
        if room_id not in joined:
            joined[room_id] = None
            self._rooms.setdefault(room_id, {})[client_id] = client
        return list(joined)

    def leave(self, client_id: str, room_id: str) -> list[str] | None:
        """Take a connected client out of a room (not in it is fine); its rooms now, or None if not connected."""
        joined = self._joined.get(client_id)
        if joined is None:
            return None
        if room_id in joined:
            del joined[room_id]
            self._drop_member(room_id, client_id)
        return list(joined)

    def rooms_of(self, client_id: str) -> list[str]:
        """The rooms a client is in, in the order it joined them ([] if not connected)."""
        return list(self._joined.get(client_id, ()))

    def _drop_member(self, room_id: str, client_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.pop(client_id, None)
            if not room:
                del self._rooms[room_id]

    def client(self, client_id: str) -> _Client | None:
        """The connected client with this id, or None."""
        return self._clients.get(client_id)

    def occupied(self, room_id: str) -> bool:
        """True while the room has a member here."""
        return room_id in self._rooms

    def members(self, room_id: str) -> list[_Client]:
        """The clients of a room, each once (a copy: sending may remove clients)."""
        return list(self._rooms.get(room_id, {}).values())

    def everyone(self) -> list[_Client]:
        """Every connected client, each once (a copy)."""
        return list(self._clients.values())
