"""The chat backend: rooms, names, members and messages, on the asyncio face.

A browser connects to ``/ws/<room>?name=<name>``. Every WebSocket message is
one JSON object. The page sends::

    {"text": "hello"}

and receives objects told apart by ``type``:

* ``{"type": "welcome", "id": ..., "name": ..., "room": ...}`` to the newcomer only;
* ``{"type": "join", "id": ..., "name": ..., "room": ...}`` and
  ``{"type": "leave", "id": ..., "name": ..., "room": ...}`` to the room;
* ``{"type": "members", "room": ..., "members": [{"id": ..., "name": ...}, ...]}`` to the room
  on every change, sorted by name;
* ``{"type": "message", "id": ..., "name": ..., "room": ..., "text": ..., "time": <unix seconds>}``
  to the room;
* ``{"type": "kick", "name": ..., "by": ..., "room": ...}`` to the room when a member was kicked;
* ``{"type": "notice", "text": ...}`` to one client, about something it did.

Two commands: ``/kick name`` (only the room's first member, the one connected
longest, may kick; the kicked page is closed with code 4000 and the reason)
and ``/join room`` (the sender joins a second room: its messages reach the
sender too).

The member list comes from the broker (``room_members``), so it is right
whichever backend of several handles which client. Against a broker without
the extension (the reference one) the backend falls back to its own record of
the clients it served, and the commands answer with a notice.

A handshake with an empty or overlong name, or a room name outside
``[A-Za-z0-9_-]{1,40}``, is rejected (the embedded broker answers HTTP 403).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from pystrands import AsyncPyStrandsClient, NotConnectedError, NotSupportedError
from pystrands.context import ConnectionRequestContext, Context

__all__ = ["KICK_CODE", "MAX_NAME", "MAX_TEXT", "ChatBackend", "ChatRooms", "check_name", "room_from_url"]

MAX_NAME = 24
MAX_TEXT = 500
ROOM = re.compile(r"[A-Za-z0-9_-]{1,40}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The close code of a kicked client (application range); the page does not reconnect after it.
KICK_CODE = 4000


def room_from_url(url: str) -> str | None:
    """The room named by a ``/ws/<room>`` path ("lobby" for ``/ws/``), or None if invalid."""
    room = url.strip("/").removeprefix("ws").strip("/") or "lobby"
    return room if ROOM.fullmatch(room) else None


def check_name(name: str) -> str | None:
    """The trimmed display name, or None when it is empty, too long or has control characters."""
    name = name.strip()
    if not name or len(name) > MAX_NAME or CONTROL.search(name):
        return None
    return name


def encode(payload: dict[str, Any]) -> str:
    """One WebSocket message of the chat's JSON shape."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sorted_members(members: dict[str, str]) -> list[dict[str, str]]:
    """Client id -> name as the page shows members: sorted by name."""
    return [{"id": cid, "name": name}
            for cid, name in sorted(members.items(), key=lambda item: (item[1].lower(), item[0]))]


def first_member(members: list[Context]) -> Context | None:
    """The member connected longest (by the ``since`` of its metadata), None for an empty room."""
    return min(members, key=lambda m: (m.metadata.get("since", 0.0), m.client_id), default=None)


class ChatRooms:
    """Who is in which room: client id -> name, per room; no I/O."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, str]] = {}

    def join(self, room: str, client_id: str, name: str) -> None:
        """Add a client to a room."""
        self.rooms.setdefault(room, {})[client_id] = name

    def leave(self, room: str, client_id: str) -> None:
        """Remove a client; a room without members is forgotten."""
        members = self.rooms.get(room, {})
        members.pop(client_id, None)
        if not members:
            self.rooms.pop(room, None)

    def members(self, room: str) -> list[dict[str, str]]:
        """The room's members as the page shows them, sorted by name."""
        return sorted_members(self.rooms.get(room, {}))

    def clear(self) -> None:
        """Forget everyone (the broker connection was lost, so were its clients)."""
        self.rooms.clear()


class ChatBackend(AsyncPyStrandsClient):
    """Accepts named clients into rooms and relays their messages as JSON."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.chat = ChatRooms()

    async def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        room = room_from_url(request.url)
        name = check_name((request.query.get("name") or [""])[0])
        if room is None or name is None:
            return False
        request.context.room_id = room
        request.context.metadata = {"name": name, "since": time.time()}
        return True

    async def on_new_connection(self, context: Context) -> None:
        name = context.metadata["name"]
        self.chat.join(context.room_id, context.client_id, name)
        await self.send_private_message(context.client_id, encode(
            {"type": "welcome", "id": context.client_id, "name": name, "room": context.room_id}))
        await self.send_room_message(context.room_id, encode(
            {"type": "join", "id": context.client_id, "name": name, "room": context.room_id}))
        await self.send_members(context.room_id)

    async def on_message(self, message: str, context: Context) -> None:
        try:
            text = json.loads(message)["text"]
        except (ValueError, TypeError, KeyError):
            text = None
        if not isinstance(text, str):
            await self.notice(context, 'Send a JSON object: {"text": "..."}.')
            return
        text = text.strip()
        command, _, argument = text.partition(" ")
        if command in ("/kick", "/join"):
            try:
                await (self.kick if command == "/kick" else self.join)(context, argument.strip())
            except NotSupportedError:
                await self.notice(context, f"{command} needs a broker with the PyStrands extensions.")
        elif not text:
            await self.notice(context, "Empty messages are not sent.")
        elif len(text) > MAX_TEXT:
            await self.notice(context, f"Messages are limited to {MAX_TEXT} characters; yours has {len(text)}.")
        else:
            await self.send_room_message(context.room_id, encode(
                {"type": "message", "id": context.client_id, "name": context.metadata["name"],
                 "room": context.room_id, "text": text, "time": time.time()}))

    async def kick(self, context: Context, name: str) -> None:
        """``/kick name``: the room's first member closes another member's page (code 4000)."""
        members = await self.room_members(context.room_id)
        first = first_member(members)
        if first is None or first.client_id != context.client_id:
            owner = first.metadata["name"] if first is not None else "nobody"
            await self.notice(context, f"Only the room's first member ({owner}) may kick.")
            return
        targets = [m for m in members if m.metadata.get("name") == name and m.client_id != context.client_id]
        if not targets:
            await self.notice(context, f"Nobody else here is called {name!r}.")
            return
        by = context.metadata["name"]
        for target in targets:
            await self.send_room_message(context.room_id, encode(
                {"type": "kick", "name": name, "by": by, "room": context.room_id}))
            await self.disconnect_client(target.client_id, KICK_CODE, f"Kicked from #{context.room_id} by {by}")

    async def join(self, context: Context, room: str) -> None:
        """``/join room``: the sender joins ``room`` too; that room's messages reach it as well."""
        if not ROOM.fullmatch(room):
            await self.notice(context, "Usage: /join room (letters, digits, - and _, at most 40).")
            return
        if room in context.rooms:
            await self.notice(context, f"You are already in #{room}.")
            return
        await self.join_room(context.client_id, room)
        await self.notice(context, f"You joined #{room} too: its messages appear here.")
        await self.send_room_message(room, encode(
            {"type": "join", "id": context.client_id, "name": context.metadata["name"], "room": room}))
        await self.send_members(room)

    async def on_disconnect(self, context: Context) -> None:
        self.chat.leave(context.room_id, context.client_id)
        for room in dict.fromkeys([context.room_id, *context.rooms]):
            await self.send_room_message(room, encode(
                {"type": "leave", "id": context.client_id, "name": context.metadata["name"], "room": room}))
            await self.send_members(room)

    async def forget_members_while_offline(self, interval: float = 0.2) -> None:
        """Clear the member lists whenever the broker link is down: its clients went with it.

        The broker sends no ``disconnected`` for clients it lost by stopping, and
        they come back under new ids, so without this a restart leaves ghosts.
        """
        while True:
            if not self.connected:
                self.chat.clear()
            await asyncio.sleep(interval)

    async def notice(self, context: Context, text: str) -> None:
        """A message to one client only, about something it did."""
        await self.send_private_message(context.client_id, encode({"type": "notice", "text": text}))

    async def members(self, room: str) -> list[dict[str, str]]:
        """The room's members as the page shows them: from the broker, else this backend's own record."""
        try:
            members = await self.room_members(room)
        except NotSupportedError:
            return self.chat.members(room)
        return sorted_members({m.client_id: m.metadata.get("name", "?") for m in members})

    async def send_members(self, room: str) -> None:
        """The room's member list, to the room (unless the broker went away meanwhile, and its clients with it)."""
        try:
            members = await self.members(room)
        except NotConnectedError:
            return
        await self.send_room_message(room, encode({"type": "members", "room": room, "members": members}))
