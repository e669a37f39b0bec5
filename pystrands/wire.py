"""Frames of the broker wire protocol <-> bytes. No I/O and no Twisted here.

A frame is one compact JSON object per line: ``{"request_id", "action",
"params"}``. Decoding turns anything malformed into a :class:`ProtocolError`
that says what is wrong; the builders refuse arguments the reference broker
cannot survive (a non-string ``message`` crashes it) with a ``TypeError``
that names the argument.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import orjson

from .errors import ProtocolError

__all__ = [
    "AUTH",
    "BROADCAST",
    "CONNECTION_REQUEST",
    "DISCONNECTED",
    "DISCONNECT_CLIENT",
    "ERROR",
    "FEATURES",
    "HEARTBEAT",
    "HELLO",
    "JOIN_ROOM",
    "LEAVE_ROOM",
    "MAX_REASON_BYTES",
    "MESSAGE_TO_CONNECTION",
    "MESSAGE_TO_ROOM",
    "NEW_CONNECTION",
    "NEW_MESSAGE",
    "REPLY",
    "RESPONSE",
    "ROOM_MEMBERS",
    "SET_METADATA",
    "Frame",
    "Hello",
    "ProtocolError",
    "Reply",
    "Request",
    "auth_frame",
    "broadcast_frame",
    "check_close",
    "decode_frame",
    "decode_hello",
    "decode_parts",
    "decode_reply",
    "disconnect_client_request",
    "encode_frame",
    "excerpt",
    "join_room_request",
    "leave_room_request",
    "new_message_frame",
    "private_message_frame",
    "response_frame",
    "room_members_request",
    "room_message_frame",
    "set_metadata_request",
    "unwrap_metadata",
]

# Broker -> backend actions.
#: A WebSocket handshake to judge; answered by a ``response`` frame with the same request_id.
CONNECTION_REQUEST = "connection_request"
#: A client completed its handshake and is in its room.
NEW_CONNECTION = "new_connection"
#: A client sent a message.
NEW_MESSAGE = "new_message"
#: A client's WebSocket closed.
DISCONNECTED = "disconnected"
#: The broker reports an error (e.g. no backend for a handshake).
ERROR = "error"
#: Sent every 15 s by the broker so that a dead link is noticed.
HEARTBEAT = "heartbeat"
#: The embedded broker's first frame to each backend: protocol version and features (extension).
HELLO = "hello"
#: The answer to one extension request of this backend, same request_id (extension).
REPLY = "reply"

# Backend -> broker actions. AUTH is this project's extension: the reference
# broker logs and skips unknown actions, so sending it is safe everywhere.
#: The answer to a ``connection_request``: accepted, client_id, room_id, metadata.
RESPONSE = "response"
#: A message for every client of a room.
MESSAGE_TO_ROOM = "message_to_room"
#: A message for one client (``conn_id``).
MESSAGE_TO_CONNECTION = "message_to_connection"
#: A message for every connected client.
BROADCAST = "broadcast"
#: A backend's first frame to a broker started with a backend token.
AUTH = "auth"

# Backend -> broker requests of the protocol extension (docs/PROTOCOL-EXTENSIONS.md).
# Each names the feature a broker announces in ``hello`` and is answered by a ``reply``.
#: Ask for the client contexts of a room's members.
ROOM_MEMBERS = "room_members"
#: Close one client's WebSocket with a code and reason.
DISCONNECT_CLIENT = "disconnect_client"
#: Put a client in one more room.
JOIN_ROOM = "join_room"
#: Take a client out of a room.
LEAVE_ROOM = "leave_room"
#: Replace a client's metadata.
SET_METADATA = "set_metadata"
#: Every extension request, in the order the spec lists them.
FEATURES = (ROOM_MEMBERS, DISCONNECT_CLIENT, JOIN_ROOM, LEAVE_ROOM, SET_METADATA)


class Frame(NamedTuple):
    """One decoded frame."""

    #: The frame's id (a response carries its request's).
    request_id: str
    #: What the frame is (one of the action constants).
    action: str
    #: The action's parameters.
    params: dict[str, Any]


def excerpt(line: bytes | str, limit: int = 120) -> str:
    """A short printable form of a line, for log messages about bad input."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return repr(text if len(text) <= limit else text[:limit] + "...")


_new_frame = tuple.__new__  # a Frame without NamedTuple's keyword-handling constructor


def decode_frame(line: bytes | str) -> Frame:
    """Parse one line (without its newline) into a :class:`Frame`.

    ``params`` may be absent (it becomes ``{}``), and so may ``request_id``
    (it becomes ``""``); every other deviation raises :class:`ProtocolError`.
    """
    return _new_frame(Frame, decode_parts(line))


def decode_parts(line: bytes | str) -> tuple[str, str, dict[str, Any]]:
    """:func:`decode_frame`'s ``(request_id, action, params)`` as a plain tuple, for the per-message path
    (a :class:`Frame`, a tuple subclass, costs four times as much to make)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    try:
        request_id, action, params = obj["request_id"], obj["action"], obj["params"]
    except (KeyError, TypeError):
        return _checked_parts(obj)
    # orjson makes exact types: the frames the broker sends pass here.
    if type(action) is str and type(request_id) is str and type(params) is dict:
        return request_id, action, params
    return _checked_parts(obj)


def _checked_parts(obj: Any) -> tuple[str, str, dict[str, Any]]:
    """A frame's parts from a decoded value missing an optional key, or the ProtocolError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"not a JSON object but {type(obj).__name__}")
    action = obj.get("action")
    if not isinstance(action, str):
        raise ProtocolError("'action' is missing" if action is None else "'action' is not a string")
    request_id = obj.get("request_id", "")
    if not isinstance(request_id, str):
        raise ProtocolError("'request_id' is not a string")
    params = obj.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise ProtocolError("'params' is not an object")
    return request_id, action, params


# The broker ignores the request_id of sends; a counter is unique per process
# and costs a tenth of a uuid4 on the per-message path.
_send_ids = itertools.count(1)


def _not_json(action: str, exc: orjson.JSONEncodeError) -> TypeError:
    """The TypeError of a frame that JSON cannot carry (a lone surrogate, a set, a NaN...)."""
    return TypeError(f"{action} frame cannot be encoded as JSON: {exc}")


def encode_frame(action: str, params: dict[str, Any], request_id: str | None = None) -> bytes:
    """Serialise a frame as compact JSON plus the newline delimiter.

    Without ``request_id`` the frame gets a fresh one (``s1``, ``s2``...).
    Raises ``TypeError`` when ``params`` holds something JSON cannot carry.
    """
    if request_id is None:
        request_id = f"s{next(_send_ids)}"
    try:
        body = orjson.dumps({"request_id": request_id, "action": action, "params": params})
    except orjson.JSONEncodeError as exc:
        raise _not_json(action, exc) from None
    return body + b"\n"


# The frames below are written from templates, their strings encoded one by one: a third of the cost
# of building and encoding a dict. Exact str types are checked first, for the common case.
_dumps = orjson.dumps


def new_message_frame(message: str, context: bytes) -> bytes:
    """A ``new_message`` event, ``context`` given already encoded as JSON: the bytes of
    ``encode_frame(NEW_MESSAGE, {"message": message, "context": ...})``, without building and encoding
    the context again for each message (the broker keeps each client's encoded)."""
    try:
        encoded = _dumps(message)
    except orjson.JSONEncodeError as exc:
        raise _not_json(NEW_MESSAGE, exc) from None
    return b'{"request_id":"s%d","action":"new_message","params":{"message":%b,"context":%b}}\n' % (
        next(_send_ids), encoded, context)


def _require_finite(name: str, value: object) -> None:
    """TypeError if ``value`` holds a float NaN or infinity anywhere: JSON has no such numbers, and the
    encoder would write ``null`` in their place, changing the data without a word."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise TypeError(f"{name} cannot be encoded as JSON: {item!r} is not a JSON number")
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)


def _require_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")


def response_frame(
    request_id: str, accepted: bool, client_id: str, room_id: str, metadata: Any
) -> bytes:
    """The answer to a ``connection_request``; ``metadata`` must be JSON-encodable."""
    _require_str("request_id", request_id)
    _require_str("client_id", client_id)
    _require_str("room_id", room_id)
    _require_finite("metadata", metadata)
    params = {"accepted": bool(accepted), "client_id": client_id, "room_id": room_id,
              "metadata": {} if metadata is None else metadata}
    return encode_frame(RESPONSE, params, request_id)


def room_message_frame(room_id: str, message: str) -> bytes:
    """A message for every client in ``room_id``."""
    return _addressed(_TO_ROOM, MESSAGE_TO_ROOM, "room_id", room_id, message)


def private_message_frame(client_id: str, message: str) -> bytes:
    """A message for the one client ``client_id``."""
    return _addressed(_TO_CONNECTION, MESSAGE_TO_CONNECTION, "client_id", client_id, message)


_TO_ROOM = b'{"request_id":"s%d","action":"message_to_room","params":{"room_id":%b,"message":%b}}\n'
_TO_CONNECTION = b'{"request_id":"s%d","action":"message_to_connection","params":{"conn_id":%b,"message":%b}}\n'


def _addressed(template: bytes, action: str, name: str, to: str, message: str) -> bytes:
    """``template`` filled with a fresh id, ``to`` (called ``name`` in errors) and ``message``."""
    if type(to) is not str or type(message) is not str:
        _require_str(name, to)
        _require_str("message", message)
    try:
        return template % (next(_send_ids), _dumps(to), _dumps(message))
    except orjson.JSONEncodeError as exc:
        raise _not_json(action, exc) from None


def broadcast_frame(message: str) -> bytes:
    """A message for every connected client."""
    if type(message) is not str:
        _require_str("message", message)
    try:
        return b'{"request_id":"s%d","action":"broadcast","params":{"message":%b}}\n' % (
            next(_send_ids), _dumps(message))
    except orjson.JSONEncodeError as exc:
        raise _not_json(BROADCAST, exc) from None


def auth_frame(token: str) -> bytes:
    """The first frame to a broker started with a backend token."""
    _require_str("token", token)
    return encode_frame(AUTH, {"token": token})


class Request(NamedTuple):
    """An extension request, checked and encoded but for its request_id (chosen per connection)."""

    #: The request's action, which is also the feature the broker must announce.
    action: str
    #: The params object, already encoded as JSON.
    params: bytes

    def frame(self, request_id: str) -> bytes:
        """The request's line with ``request_id``, newline included."""
        _require_str("request_id", request_id)
        return (b'{"request_id":' + orjson.dumps(request_id) + b',"action":' + orjson.dumps(self.action)
                + b',"params":' + self.params + b"}\n")


def _request(action: str, params: dict[str, Any], unencodable: str = "") -> Request:
    """The request; TypeError (starting with ``unencodable`` when given) if params are not JSON."""
    try:
        return Request(action, orjson.dumps(params))
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"{unencodable or action + ' params cannot be encoded as JSON'}: {exc}") from None


#: A close frame's reason fits in 123 bytes of UTF-8 (its payload holds 125, the code takes 2).
MAX_REASON_BYTES = 123


def check_close(code: int, reason: str) -> None:
    """The rules of a close a backend may ask for, shared by the library and the broker.

    ``code`` (an int) must be 1000 or 3000-4999: normal closure, or the
    registered and application ranges (1001-2999 are the WebSocket
    protocol's own); ``reason`` (a str) at most :data:`MAX_REASON_BYTES`
    bytes of UTF-8. ``ValueError`` naming the rule broken otherwise.
    """
    if not (code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"code must be 1000 or 3000-4999 (a close code a server may send), not {code}")
    size = len(reason.encode("utf-8", "surrogatepass"))
    if size > MAX_REASON_BYTES:
        raise ValueError(f"reason must be at most {MAX_REASON_BYTES} bytes of UTF-8"
                         f" (what a close frame holds), not {size}")


def room_members_request(room_id: str) -> Request:
    """Ask for the members of ``room_id`` (str)."""
    _require_str("room_id", room_id)
    return _request(ROOM_MEMBERS, {"room_id": room_id})


def disconnect_client_request(client_id: str, code: int = 1000, reason: str = "") -> Request:
    """Ask the broker to close ``client_id``'s WebSocket with ``code`` and ``reason``.

    ``code`` must be an int, 1000 or 3000-4999 (``ValueError`` otherwise);
    ``reason`` a str of at most 123 bytes of UTF-8.
    """
    _require_str("client_id", client_id)
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"code must be an int, not {type(code).__name__}")
    _require_str("reason", reason)
    check_close(code, reason)
    return _request(DISCONNECT_CLIENT, {"client_id": client_id, "code": code, "reason": reason})


def join_room_request(client_id: str, room_id: str) -> Request:
    """Ask the broker to put ``client_id`` in ``room_id`` too."""
    _require_str("client_id", client_id)
    _require_str("room_id", room_id)
    return _request(JOIN_ROOM, {"client_id": client_id, "room_id": room_id})


def leave_room_request(client_id: str, room_id: str) -> Request:
    """Ask the broker to take ``client_id`` out of ``room_id``."""
    _require_str("client_id", client_id)
    _require_str("room_id", room_id)
    return _request(LEAVE_ROOM, {"client_id": client_id, "room_id": room_id})


def set_metadata_request(client_id: str, metadata: Any) -> Request:
    """Ask the broker to give ``client_id`` the new ``metadata`` (any JSON value; ``TypeError`` otherwise)."""
    _require_str("client_id", client_id)  # then only the metadata can fail to encode
    _require_finite("metadata", metadata)
    return _request(SET_METADATA, {"client_id": client_id, "metadata": metadata},
                    "metadata must be JSON-serialisable")


class Hello(NamedTuple):
    """What a broker announces in its ``hello`` frame."""

    #: The extension protocol's version (1).
    protocol: int
    #: The broker's name (``pystrands-twisted``), "" when not given.
    broker: str
    #: The broker's version, "" when not given.
    version: str
    #: The extension requests the broker answers.
    features: frozenset[str]


def decode_hello(params: dict[str, Any]) -> Hello:
    """The announcement in a ``hello`` frame's params; :class:`ProtocolError` when malformed.

    Unknown features are kept (the library ignores them); a feature that is
    not a string makes the frame malformed.
    """
    protocol = params.get("protocol")
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise ProtocolError("hello: 'protocol' is not an integer")
    features = params.get("features", [])
    if not isinstance(features, list) or not all(isinstance(name, str) for name in features):
        raise ProtocolError("hello: 'features' is not a list of strings")
    broker, version = params.get("broker", ""), params.get("version", "")
    return Hello(protocol, broker if isinstance(broker, str) else "", version if isinstance(version, str) else "",
                 frozenset(features))


class Reply(NamedTuple):
    """A broker's answer to one extension request."""

    #: True when the broker did what was asked.
    ok: bool
    #: The answer's value when ``ok`` (None otherwise).
    result: Any
    #: Why the broker refused, when not ``ok`` ("" otherwise).
    error: str


def decode_reply(params: dict[str, Any]) -> Reply:
    """The answer in a ``reply`` frame's params; :class:`ProtocolError` when ``ok`` is not a bool."""
    ok = params.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("reply: 'ok' is not a boolean")
    if ok:
        return Reply(True, params.get("result"), "")
    error = params.get("error")
    return Reply(False, None, error if isinstance(error, str) and error else "the broker refused the request")


def unwrap_metadata(metadata: Any) -> Any:
    """The application's metadata from a client context's ``metadata``.

    The reference broker sends the backend's whole ``response`` params there
    (``{"accepted", "client_id", "room_id", "metadata"}``); the embedded
    broker sends the plain object. Both give what ``on_connection_request``
    stored; a missing value gives ``{}``.
    """
    if isinstance(metadata, dict) and (
        # Four lookups: cheaper than a set operation on the keys, and "accepted" fails fast on plain metadata.
        "accepted" in metadata and "client_id" in metadata and "room_id" in metadata and "metadata" in metadata
    ):
        metadata = metadata["metadata"]
    return {} if metadata is None else metadata
