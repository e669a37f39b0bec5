"""Which WebSocket clients exist, and which room each is in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["Rooms"]

_Client = TypeVar("_Client")


class Rooms(Generic[_Client]):
    """Clients by id and by room; a client id is reserved from acceptance to disconnect.

    A room exists while it has clients. Reserving before the WebSocket
    upgrade completes keeps two handshakes from taking the same id.
    """

    def __init__(self) -> None:
        self._reserved: set[str] = set()
        self._clients: dict[str, _Client] = {}
        self._rooms: dict[str, dict[str, _Client]] = {}

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
        """Put a client (its id reserved before) in its room."""
        self._clients[client_id] = client
        self._rooms.setdefault(room_id, {})[client_id] = client

    def remove(self, client_id: str, room_id: str) -> None:
        """Forget a client; its room goes when empty."""
        self._reserved.discard(client_id)
        self._clients.pop(client_id, None)
        room = self._rooms.get(room_id)
        if room is not None:
            room.pop(client_id, None)
            if not room:
                del self._rooms[room_id]

    def client(self, client_id: str) -> _Client | None:
        """The connected client with this id, or None."""
        return self._clients.get(client_id)

    def members(self, room_id: str) -> Iterable[_Client]:
        """The clients of a room (a copy: sending may remove clients)."""
        return list(self._rooms.get(room_id, {}).values())

    def everyone(self) -> Iterable[_Client]:
        """Every connected client (a copy)."""
        return list(self._clients.values())
