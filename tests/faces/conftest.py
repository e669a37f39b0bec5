"""Fixtures and frame helpers of the face tests: a fake broker on 127.0.0.1 and transcript frames."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest

from tests.support import ports, transcript
from tests.support.fakebroker import BackendConnection, FakeBroker


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as fake:
        yield fake


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (yet)."""
    return ports.free_port()


def recorded(action: str, index: int = 0) -> dict[str, Any]:
    """A copy of the reference broker's ``index``-th recorded frame of ``action``."""
    return copy.deepcopy(transcript.frames(sent_by="broker", action=action)[index])


def backend_frames(note_prefix: str) -> list[dict[str, Any]]:
    """What the reference backend sent in the transcript scenario whose note starts with ``note_prefix``."""
    for note, entries in transcript.scenarios():
        if note.startswith(note_prefix):
            return [entry["frame"] for entry in entries
                    if "frame" in entry and entry["dir"].startswith("backend")]
    raise LookupError(note_prefix)


def connection_request(request_id: str = "r1", url: str = "/ws/lobby/alice",
                       headers: dict[str, list[str]] | None = None,
                       remote_addr: str = "127.0.0.1:46092") -> dict[str, Any]:
    """The transcript's connection_request with the given parts replaced."""
    frame = recorded("connection_request")
    frame["request_id"] = request_id
    frame["params"]["url"] = url
    frame["params"]["remote_addr"] = remote_addr
    if headers is not None:
        frame["params"]["headers"] = headers
    return frame


def nested_context(client_id: str, room_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A client context as the reference broker sends it: the whole response params as metadata."""
    return {"client_id": client_id, "room_id": room_id,
            "metadata": {"accepted": True, "client_id": client_id, "room_id": room_id, "metadata": metadata}}


def event(action: str, context: dict[str, Any], request_id: str = "e1", **params: Any) -> dict[str, Any]:
    """A broker->backend event frame (new_connection, new_message, disconnected, error)."""
    return {"request_id": request_id, "action": action, "params": {"context": context, **params}}


def accept_client(conn: BackendConnection, request_id: str = "r1", url: str = "/ws/lobby/alice",
                  **request: Any) -> dict[str, Any]:
    """Send a connection_request, return the response params."""
    conn.send_frame(connection_request(request_id, url, **request))
    reply = conn.recv_frame()
    assert reply["action"] == "response" and reply["request_id"] == request_id, reply
    return reply["params"]


def answer_like_the_reference(request: Any) -> bool:
    """Judge a request as the transcript's backend did: /ws/<room>/<user>, refused for a bad X-Token."""
    if request.headers.get("X-Token", ["ok"]) != ["ok"]:
        return False
    user = request.url.rsplit("/", 1)[-1]
    request.context.client_id = "client-" + user
    request.context.room_id = request.url.split("/")[2]
    request.context.metadata = {"user": user}
    return True
