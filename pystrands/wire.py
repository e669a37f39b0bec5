"""Frames of the broker wire protocol <-> bytes. No I/O and no Twisted here.

A frame is one compact JSON object per line: ``{"request_id", "action",
"params"}``. Decoding turns anything malformed into a :class:`ProtocolError`
that says what is wrong; the builders refuse arguments the reference broker
cannot survive (a non-string ``message`` crashes it) with a ``TypeError``
that names the argument.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import orjson

from .errors import ProtocolError

__all__ = [
    "AUTH",
    "BROADCAST",
    "CONNECTION_REQUEST",
    "DISCONNECTED",
    "ERROR",
    "HEARTBEAT",
    "MESSAGE_TO_CONNECTION",
    "MESSAGE_TO_ROOM",
    "NEW_CONNECTION",
    "NEW_MESSAGE",
    "RESPONSE",
    "Frame",
    "ProtocolError",
    "auth_frame",
    "broadcast_frame",
    "decode_frame",
    "encode_frame",
    "excerpt",
    "private_message_frame",
    "response_frame",
    "room_message_frame",
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

_NESTED_METADATA_KEYS = frozenset(("accepted", "client_id", "room_id", "metadata"))


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


def decode_frame(line: bytes | str) -> Frame:
    """Parse one line (without its newline) into a :class:`Frame`.

    ``params`` may be absent (it becomes ``{}``), and so may ``request_id``
    (it becomes ``""``); every other deviation raises :class:`ProtocolError`.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    try:
        request_id, action, params = obj["request_id"], obj["action"], obj["params"]
    except (KeyError, TypeError):
        return _checked_frame(obj)
    # orjson makes exact types: the frames the broker sends pass here.
    if type(action) is str and type(request_id) is str and type(params) is dict:
        return _new_frame(Frame, (request_id, action, params))
    return _checked_frame(obj)


_new_frame = tuple.__new__  # a Frame without NamedTuple's keyword-handling constructor


def _checked_frame(obj: Any) -> Frame:
    """A frame from a decoded value missing an optional key, or the ProtocolError saying what is wrong."""
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
    return Frame(request_id, action, params)


# The broker ignores the request_id of sends; a counter is unique per process
# and costs a tenth of a uuid4 on the per-message path.
_send_ids = itertools.count(1)


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
        raise TypeError(f"{action} frame cannot be encoded as JSON: {exc}") from None
    return body + b"\n"


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
    params = {"accepted": bool(accepted), "client_id": client_id, "room_id": room_id,
              "metadata": {} if metadata is None else metadata}
    return encode_frame(RESPONSE, params, request_id)


def room_message_frame(room_id: str, message: str) -> bytes:
    """A message for every client in ``room_id``."""
    _require_str("room_id", room_id)
    _require_str("message", message)
    return encode_frame(MESSAGE_TO_ROOM, {"room_id": room_id, "message": message})


def private_message_frame(client_id: str, message: str) -> bytes:
    """A message for the one client ``client_id``."""
    _require_str("client_id", client_id)
    _require_str("message", message)
    return encode_frame(MESSAGE_TO_CONNECTION, {"conn_id": client_id, "message": message})


def broadcast_frame(message: str) -> bytes:
    """A message for every connected client."""
    _require_str("message", message)
    return encode_frame(BROADCAST, {"message": message})


def auth_frame(token: str) -> bytes:
    """The first frame to a broker started with a backend token."""
    _require_str("token", token)
    return encode_frame(AUTH, {"token": token})


def unwrap_metadata(metadata: Any) -> Any:
    """The application's metadata from a client context's ``metadata``.

    The reference broker sends the backend's whole ``response`` params there
    (``{"accepted", "client_id", "room_id", "metadata"}``); the embedded
    broker sends the plain object. Both give what ``on_connection_request``
    stored; a missing value gives ``{}``.
    """
    if isinstance(metadata, dict) and _NESTED_METADATA_KEYS.issubset(metadata):
        metadata = metadata["metadata"]
    return {} if metadata is None else metadata
