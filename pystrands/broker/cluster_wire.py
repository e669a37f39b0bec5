"""What cluster nodes say to each other over Redis pub/sub: encoding, and strict decoding.

Each message is one JSON array ``[kind, origin, *fields]``: ``kind`` names
it, ``origin`` is the sending node's id, and the fields of each kind have
fixed JSON types (:data:`KINDS`). :func:`decode` checks all of it and
raises :class:`ClusterWireError` on anything else, so that foreign or
corrupt data on a channel is skipped with a reason instead of reaching the
router. No I/O here. docs/CLUSTER.md lists the kinds and their channels.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["KINDS", "ClusterWireError", "decode", "encode", "starts_of"]

_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_FLAG = (bool,)
_NUMBER = (int,)
_OBJECT = (dict,)
_ARRAY = (list,)
_ANY = (str, int, float, bool, list, dict, type(None))

#: The fields of each kind, by JSON type (exact types: a boolean is not a number).
KINDS: dict[str, tuple[tuple[type, ...], ...]] = {
    # A backend's message_to_room, on the room's channel.
    "room": (_TEXT,),
    # A backend's broadcast, on the cluster's channel.
    "all": (_TEXT,),
    # A backend's message_to_connection, on the client's channel.
    "to": (_TEXT,),
    # An extension request about a client (join_room, leave_room, set_metadata, disconnect_client),
    # on the client's channel: request id, action, params.
    "ask": (_TEXT, _TEXT, _OBJECT),
    # The outcome of "ask" once in effect (a room joined is subscribed), on the asking node's channel:
    # request id, result.
    "done": (_TEXT, _FLAG),
    # A node's heartbeat on the nodes channel: its backends, and whether the others should beat back now.
    "beat": (_NUMBER, _FLAG),
    # A node that stops, on the nodes channel.
    "bye": (),
    # A node forgotten for its silence, on the nodes channel: its id (it may be alive, and must know).
    "forgot": (_TEXT,),
    # A client's event for a backend on another node, on that node's channel: client id, final, frame.
    "event": (_OPTIONAL_TEXT, _FLAG, _TEXT),
    # A handshake for a backend on another node, on that node's channel: request id, connection_request params.
    "judge": (_TEXT, _OBJECT),
    # The answer to "judge", on the asking node's channel: request id, HTTP status (200: accepted),
    # reason, and client id, room id, metadata (null unless accepted).
    "verdict": (_TEXT, _NUMBER, _TEXT, _OPTIONAL_TEXT, _OPTIONAL_TEXT, _ANY),
    # An accepted client that never connected, on the judging node's channel: client id.
    "abandon": (_TEXT,),
    # After either node could not hear Redis, on the channel of a node that serves the origin's clients:
    # the ids of those the origin still has whose events go there (the others' goodbyes, or abandons, may
    # have been lost).
    "keep": (_ARRAY,),
    # room_members on another node, on the room's channel: query id.
    "who": (_TEXT,),
    # The answer to "who", on the asking node's channel: query id, the members' contexts.
    "members": (_TEXT, _ARRAY),
}


class ClusterWireError(ValueError):
    """A payload that is not a cluster message; the message says why."""


def encode(kind: str, origin: str, *fields: Any) -> bytes:
    """One cluster message (the caller passes the fields ``KINDS`` lists for ``kind``)."""
    return orjson.dumps([kind, origin, *fields])


def starts_of(origin: str) -> tuple[bytes, ...]:
    """How every message :func:`encode` makes for ``origin`` starts, up to the origin's closing quote:
    a node recognises what it published itself without decoding it."""
    return tuple(encode(kind, origin)[:-1] for kind in KINDS)


def decode(payload: bytes) -> tuple[str, str, list[Any]]:
    """``(kind, origin, fields)`` of a payload, each field of its kind's type; else ClusterWireError."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ClusterWireError(f"not JSON: {exc}") from None
    if type(message) is not list or len(message) < 2:
        raise ClusterWireError("not a JSON array of a kind, an origin and fields")
    kind, origin, *fields = message
    schema = KINDS.get(kind) if type(kind) is str else None
    if schema is None:
        raise ClusterWireError(f"unknown kind {kind!r}")
    if type(origin) is not str or not origin:
        raise ClusterWireError("the origin must be a non-empty string")
    if len(fields) != len(schema):
        raise ClusterWireError(f"{kind!r} has {len(schema)} fields, not {len(fields)}")
    for position, (value, types) in enumerate(zip(fields, schema, strict=True), start=1):
        if type(value) not in types:
            raise ClusterWireError(f"{kind!r} field {position} must be {'/'.join(t.__name__ for t in types)},"
                                   f" not {type(value).__name__}")
    return kind, origin, fields
