"""A ``connection_request`` -> the backend's ``on_connection_request`` -> one ``response`` frame.

The broker waits for exactly one ``response`` per request (the reference
broker forever), so every outcome of the backend's answer becomes one:
accepted with the context it set, or rejected when it refused, raised,
or set something that cannot be encoded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from . import wire
from .context import ConnectionRequestContext, Context
from .interfaces import IBackend

__all__ = ["answer_connection_request"]

log = Logger()


def answer_connection_request(backend: IBackend, send_frame: Callable[[bytes], Deferred[None]],
                              request_id: str, params: dict[str, Any]) -> Deferred[None]:
    """Ask ``backend`` about the handshake in ``params`` and send its ``response`` through ``send_frame``."""
    url = params.get("url", "")
    query = params.get("query")
    request = ConnectionRequestContext(
        headers=params.get("headers") or {},
        url=url,
        remote_addr=params.get("remote_addr"),
        context=Context(client_id=str(uuid.uuid4()), room_id=url, metadata={}),
        accepted=True,
        query=query if isinstance(query, dict) else {},
    )
    try:
        result = backend.on_connection_request(request)
    except BaseException:
        result = fail()
    if iscoroutine(result):
        result = Deferred.fromCoroutine(result)
    answer: Deferred[object] = result if isinstance(result, Deferred) else succeed(result)
    frame = answer.addCallbacks(_response_for, _rejection_for,
                                callbackArgs=(request_id, request), errbackArgs=(request_id, request))
    return frame.addCallback(send_frame).addErrback(
        lambda failure: log.failure("Could not send the response to {request_id}", failure, LogLevel.error,
                                    request_id=request_id))


def _response_for(result: object, request_id: str, request: ConnectionRequestContext) -> bytes:
    accepted = result if isinstance(result, bool) else bool(request.accepted)
    try:
        context = request.context
        return wire.response_frame(request_id, accepted, context.client_id, context.room_id, context.metadata)
    except (TypeError, AttributeError) as exc:
        log.error("Rejected connection request {request_id}: its answer is not valid ({why})",
                  request_id=request_id, why=exc)
        return _rejection(request_id, request)


def _rejection_for(failure: Failure, request_id: str, request: ConnectionRequestContext) -> bytes:
    log.failure("on_connection_request failed; rejected request {request_id}", failure, LogLevel.error,
                request_id=request_id)
    return _rejection(request_id, request)


def _rejection(request_id: str, request: ConnectionRequestContext) -> bytes:
    """A ``response`` refusing the request, with whatever string ids the backend left in its context."""
    context = getattr(request, "context", None)
    client_id = getattr(context, "client_id", None)
    room_id = getattr(context, "room_id", None)
    return wire.response_frame(
        request_id, False,
        client_id if isinstance(client_id, str) else "",
        room_id if isinstance(room_id, str) else "",
        {},
    )
