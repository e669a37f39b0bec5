"""The broker's side of the protocol extensions (docs/PROTOCOL-EXTENSIONS.md): frames and param checks.

No I/O here. The broker greets each ready backend with :data:`HELLO_FRAME`,
which lists :data:`FEATURES`; a backend then sends extension requests, each
answered with one ``reply`` frame built by :func:`reply_frame` or
:func:`refusal_frame`. The ``*_params`` functions turn a request's params
into checked values, or raise :class:`BadParams` with a one-line reason.
"""

from __future__ import annotations

from typing import Any

from .. import __version__, wire

__all__ = [
    "DISCONNECT_CLIENT",
    "FEATURES",
    "HELLO",
    "HELLO_FRAME",
    "JOIN_ROOM",
    "LEAVE_ROOM",
    "MAX_REASON_BYTES",
    "PROTOCOL_VERSION",
    "REPLY",
    "ROOM_MEMBERS",
    "SET_METADATA",
    "BadParams",
    "close_params",
    "membership_params",
    "metadata_params",
    "refusal_frame",
    "reply_frame",
    "room_params",
]

# The action names are the library's (pystrands.wire), so both sides spell them alike.
#: Broker -> backend: the first frame to each ready backend, announcing the features.
HELLO = wire.HELLO
#: Broker -> backend: the answer to one extension request, with the request's id.
REPLY = wire.REPLY
#: Backend -> broker: the contexts of a room's clients.
ROOM_MEMBERS = wire.ROOM_MEMBERS
#: Backend -> broker: close a client's WebSocket with a code and reason.
DISCONNECT_CLIENT = wire.DISCONNECT_CLIENT
#: Backend -> broker: put a client in one more room.
JOIN_ROOM = wire.JOIN_ROOM
#: Backend -> broker: take a client out of a room.
LEAVE_ROOM = wire.LEAVE_ROOM
#: Backend -> broker: replace a client's metadata for its later events.
SET_METADATA = wire.SET_METADATA

#: The version of the extension protocol in ``hello``.
PROTOCOL_VERSION = 1
#: The extension requests this broker answers, as announced in ``hello``: all of the library's.
FEATURES = wire.FEATURES
#: A close reason must fit a close frame's 125-byte payload with its 2-byte code.
MAX_REASON_BYTES = wire.MAX_REASON_BYTES

#: The ``hello`` frame, the same for every backend.
HELLO_FRAME = wire.encode_frame(HELLO, {"protocol": PROTOCOL_VERSION, "broker": "pystrands-twisted",
                                        "version": __version__, "features": list(FEATURES)}, HELLO)


class BadParams(ValueError):
    """An extension request's params cannot be used; the message is the one-line reason."""


def reply_frame(request_id: str, result: Any) -> bytes:
    """The ``reply`` frame of a request that was carried out."""
    return wire.encode_frame(REPLY, {"ok": True, "result": result}, request_id)


def refusal_frame(request_id: str, error: str) -> bytes:
    """The ``reply`` frame of a request that was refused, with why."""
    return wire.encode_frame(REPLY, {"ok": False, "error": error}, request_id)


def _string(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if isinstance(value, str):
        return value
    if value is None and name not in params:
        raise BadParams(f"{name!r} is missing")
    raise BadParams(f"{name!r} must be a string, not {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def room_params(params: dict[str, Any]) -> str:
    """``room_members``: the room id."""
    return _string(params, "room_id")


def membership_params(params: dict[str, Any]) -> tuple[str, str]:
    """``join_room`` and ``leave_room``: the client id and the room id."""
    return _string(params, "client_id"), _string(params, "room_id")


def metadata_params(params: dict[str, Any]) -> tuple[str, Any]:
    """``set_metadata``: the client id and the new metadata (any JSON value, null included)."""
    client_id = _string(params, "client_id")
    if "metadata" not in params:
        raise BadParams("'metadata' is missing")
    return client_id, params["metadata"]


def close_params(params: dict[str, Any]) -> tuple[str, int, str]:
    """``disconnect_client``: the client id, a close code (1000 or 3000-4999), a reason of 123 UTF-8 bytes at most."""
    client_id = _string(params, "client_id")
    if "code" not in params:
        raise BadParams("'code' is missing")
    code = params["code"]
    if type(code) is not int:
        raise BadParams(f"'code' must be an integer, not {_json_type(code)}")
    reason = _string(params, "reason")
    try:
        wire.check_close(code, reason)  # the library's own rules
    except ValueError as exc:
        raise BadParams(str(exc)) from None
    return client_id, code, reason
