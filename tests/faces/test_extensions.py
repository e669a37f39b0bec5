"""The five extension requests through each documented face, against the fake broker speaking the spec frames.

With a ``hello`` the face's calls become request frames and the fake
broker's replies become results; without one (the reference broker's
frames) every call fails at once with NotSupportedError and nothing is
written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pystrands import (
    AsyncPyStrandsClient,
    BrokerRefused,
    Context,
    NotConnectedError,
    NotSupportedError,
    PyStrands,
    PyStrandsClient,
)
from tests.faces.conftest import accept_client
from tests.support.fakebroker import BackendConnection, FakeBroker

WAIT = 5.0
FEATURES = ["room_members", "disconnect_client", "join_room", "leave_room", "set_metadata"]
HELLO = {"request_id": "hello", "action": "hello",
         "params": {"protocol": 1, "broker": "pystrands-twisted", "version": "0.1.0", "features": FEATURES}}
MEMBER = {"client_id": "a", "room_id": "lobby", "metadata": {"name": "ann"}, "rooms": ["lobby", "game-7"]}

#: (method, args, the params the frame must carry, the reply's result)
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = [
    ("room_members", ("lobby",), {"room_id": "lobby"}, [MEMBER]),
    ("disconnect_client", ("a", 4000, "kicked"), {"client_id": "a", "code": 4000, "reason": "kicked"}, True),
    ("join_room", ("a", "game-7"), {"client_id": "a", "room_id": "game-7"}, True),
    ("leave_room", ("a", "lobby"), {"client_id": "a", "room_id": "lobby"}, False),
    ("set_metadata", ("a", {"name": "bob"}), {"client_id": "a", "metadata": {"name": "bob"}}, True),
]


def greet(conn: BackendConnection, hello: bool = True) -> None:
    """Send hello (or not), then a handshake whose answer shows the backend has read what came before."""
    if hello:
        conn.send_frame(HELLO)
    accept_client(conn)


def answer_requests(conn: BackendConnection) -> None:
    """Check the five request frames and reply to each (in reverse order: ids match them up)."""
    frames = conn.recv_frames(len(CALLS))
    assert [f["action"] for f in frames] == [name for name, *_ in CALLS]
    assert len({f["request_id"] for f in frames}) == len(CALLS)
    for frame, (_, _, params, result) in reversed(list(zip(frames, CALLS, strict=True))):
        assert frame["params"] == params
        conn.send_frame({"request_id": frame["request_id"], "action": "reply",
                         "params": {"ok": True, "result": result}})


def check_results(results: list[Any]) -> None:
    members, *flags = results
    assert [type(m) for m in members] == [Context]
    assert members[0].client_id == "a" and members[0].rooms == ["lobby", "game-7"]
    assert members[0].metadata == {"name": "ann"}
    assert flags == [True, True, False, True]


def blocking_calls(face: Any) -> list[concurrent.futures.Future[Any]]:
    return [getattr(face, name)(*args) for name, args, _, _ in CALLS]


def run(body: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(body(), timeout))


async def off(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


@pytest.mark.parametrize("settings", [{}, {"concurrency": 3}])
def test_blocking_face(broker: FakeBroker, settings: dict[str, Any]) -> None:
    client = PyStrandsClient(port=broker.port, auto_reconnect=False, **settings)
    assert client.connect()
    try:
        conn = broker.accept()
        greet(conn)
        futures = blocking_calls(client)
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        answer_requests(conn)
        check_results([f.result(WAIT) for f in futures])
        # Argument errors are raised in the caller; nothing is written.
        with pytest.raises(ValueError, match="code"):
            client.disconnect_client("a", 1001)
        with pytest.raises(TypeError, match="metadata"):
            client.set_metadata("a", object())
        refused = client.join_room("a", "x")
        frame = conn.recv_frame()
        conn.send_frame({"request_id": frame["request_id"], "action": "reply",
                         "params": {"ok": False, "error": "no"}})
        with pytest.raises(BrokerRefused, match="no"):
            refused.result(WAIT)
    finally:
        client.disconnect()
    with pytest.raises(NotConnectedError):
        client.room_members("lobby").result(WAIT)


def test_blocking_face_from_a_handler_on_the_io_thread(broker: FakeBroker) -> None:
    """A handler on the I/O thread chains a callback on the Future (it must not wait for it)."""
    got: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
    waited: list[str] = []

    class Client(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            members = self.room_members(context.room_id)
            try:
                members.result(1.0)  # would wait for itself: refused at once
            except RuntimeError as exc:
                waited.append(str(exc))
            members.add_done_callback(lambda f: got.set_result([m.client_id for m in f.result()]))

    client = Client(port=broker.port, auto_reconnect=False)
    assert client.connect()
    try:
        conn = broker.accept()
        greet(conn)
        conn.send_frame({"request_id": "m1", "action": "new_message",
                         "params": {"message": "who?", "context": MEMBER}})
        frame = conn.recv_frame()
        assert frame["action"] == "room_members" and frame["params"] == {"room_id": "lobby"}
        conn.send_frame({"request_id": frame["request_id"], "action": "reply",
                         "params": {"ok": True, "result": [MEMBER]}})
        assert got.result(WAIT) == ["a"]
        assert len(waited) == 1 and "I/O thread" in waited[0]
    finally:
        client.disconnect()


@contextlib.asynccontextmanager
async def greeted_async_client(broker: FakeBroker) -> AsyncIterator[tuple[AsyncPyStrandsClient, BackendConnection]]:
    """An AsyncPyStrandsClient connected to ``broker``, its hello sent; disconnected afterwards."""
    client = AsyncPyStrandsClient(port=broker.port, auto_reconnect=False)
    assert await client.connect()
    try:
        conn = await off(broker.accept)
        await off(greet, conn)
        yield client, conn
    finally:
        await client.disconnect()


def test_async_face(broker: FakeBroker) -> None:
    async def body() -> None:
        async with greeted_async_client(broker) as (client, conn):
            awaitables = [getattr(client, name)(*args) for name, args, _, _ in CALLS]
            answering = asyncio.ensure_future(off(answer_requests, conn))
            results = await asyncio.gather(*awaitables)
            await answering
            check_results(list(results))
            with pytest.raises(ValueError, match="reason"):
                client.disconnect_client("a", 4000, "x" * 124)

    run(body)


def test_async_face_from_another_thread(broker: FakeBroker) -> None:
    async def body() -> None:
        async with greeted_async_client(broker) as (client, conn):
            futures = await off(blocking_calls, client)  # a thread without a loop: concurrent Futures
            await off(answer_requests, conn)
            check_results([await asyncio.wrap_future(f) for f in futures])

    run(body)


def test_decorator_app_run(broker: FakeBroker) -> None:
    app = PyStrands(port=broker.port, auto_reconnect=False)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        conn = broker.accept()
        greet(conn)
        futures = blocking_calls(app)
        answer_requests(conn)
        check_results([f.result(WAIT) for f in futures])
    finally:
        assert app.client is not None
        app.client.disconnect()
        runner.join(WAIT)


def test_decorator_app_run_async(broker: FakeBroker) -> None:
    app = PyStrands(port=broker.port, auto_reconnect=False)

    async def body() -> None:
        runner = asyncio.ensure_future(app.run_async())
        conn = await off(broker.accept)
        await off(greet, conn)
        awaitables = [getattr(app, name)(*args) for name, args, _, _ in CALLS]
        answering = asyncio.ensure_future(off(answer_requests, conn))
        check_results(list(await asyncio.gather(*awaitables)))
        await answering
        assert isinstance(app.client, AsyncPyStrandsClient)
        await app.client.disconnect()
        await asyncio.wait_for(runner, WAIT)

    run(body)


def test_decorator_app_before_run() -> None:
    with pytest.raises(NotConnectedError, match="run"):
        PyStrands().room_members("lobby").result(WAIT)


@pytest.mark.parametrize("face", ["blocking", "async", "app"])
def test_not_supported_without_hello(broker: FakeBroker, face: str) -> None:
    """The reference broker's frames (no hello): each call fails at once, naming its feature; nothing is written."""

    def check(calls: list[Any], conn: BackendConnection) -> None:
        for (name, *_), call in zip(CALLS, calls, strict=True):
            exc = call.exception(WAIT) if isinstance(call, concurrent.futures.Future) else call
            assert isinstance(exc, NotSupportedError) and exc.feature == name and name in str(exc)
        conn.assert_silent(0.3)

    if face == "async":
        async def body() -> None:
            client = AsyncPyStrandsClient(port=broker.port, auto_reconnect=False)
            assert await client.connect()
            try:
                conn = await off(broker.accept)
                await off(greet, conn, False)
                errors = []
                for name, args, _, _ in CALLS:
                    with pytest.raises(NotSupportedError) as info:
                        await getattr(client, name)(*args)
                    errors.append(info.value)
                await off(check, errors, conn)
            finally:
                await client.disconnect()

        run(body)
        return
    face_object: Any
    if face == "blocking":
        face_object = client = PyStrandsClient(port=broker.port, auto_reconnect=False)
        assert client.connect()
        runner = None
    else:
        face_object = app = PyStrands(port=broker.port, auto_reconnect=False)
        runner = threading.Thread(target=app.run, daemon=True)
        runner.start()
    try:
        conn = broker.accept()
        greet(conn, hello=False)
        check(blocking_calls(face_object), conn)
    finally:
        (face_object if face == "blocking" else face_object.client).disconnect()
        if runner is not None:
            runner.join(WAIT)


def test_a_forgotten_request_that_fails_is_logged_once_let_go(caplog: pytest.LogCaptureFixture) -> None:
    """Like a failed send: unless its outcome was asked for (result, exception, a done callback)."""
    import gc
    import logging

    client = PyStrandsClient(host="127.0.0.1", port=1)  # never connected: every request fails at once
    with caplog.at_level(logging.WARNING):
        client.join_room("a", "game")  # made and forgotten
        waited = client.leave_room("a", "game")
        assert isinstance(waited.exception(), NotConnectedError)
        called = client.set_metadata("a", {})
        called.add_done_callback(lambda _: None)
        del waited, called
        gc.collect()
    forgotten = [r.getMessage() for r in caplog.records if "nobody asked for its result" in r.getMessage()]
    assert len(forgotten) == 1 and forgotten[0].startswith("A join_room request to the broker failed"), forgotten
    assert "not connected to the broker" in forgotten[0]
