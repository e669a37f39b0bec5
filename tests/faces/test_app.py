"""PyStrands, the decorator face: handlers of both kinds in both run modes, sends, defaults."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from pystrands import Context, PyStrands
from pystrands.logbridge import _forward
from tests.faces.conftest import accept_client, event, nested_context, recorded
from tests.faces.test_async import off, run
from tests.support.fakebroker import FakeBroker

WAIT = 5.0


def make_app(port: int, **settings: Any) -> tuple[PyStrands, list[tuple[str, Any]]]:
    """An app with one handler of each kind, recording where each ran."""
    app = PyStrands("localhost", port, reconnect_delay=0.05, **settings)
    seen: list[tuple[str, Any]] = []

    @app.on_connection_request
    def judge(request: Any) -> bool:
        seen.append(("request", threading.current_thread().name))
        request.context.room_id = request.url.strip("/").split("/")[-1]
        request.context.metadata = {"via": "app"}
        return request.headers.get("X-Token") == ["ok"]

    @app.on_new_connection
    async def welcome(context: Context) -> None:
        seen.append(("new", asyncio.current_task() is not None))
        await app.send_private_message(context.client_id, f"welcome {context.metadata['via']}")

    @app.on_message
    def echo(message: str, context: Context) -> None:
        seen.append(("message", threading.current_thread().name))
        app.send_room_message(context.room_id, f"echo: {message}").result(WAIT)
        app.broadcast(f"all: {message}").result(WAIT)

    @app.on_disconnect
    async def left(context: Context) -> None:
        seen.append(("gone", context.metadata))

    @app.on_error
    def error(message: str, context: Context) -> None:
        seen.append(("error", message))

    assert echo.__name__ == "echo"  # the decorators give the function back
    return app, seen


def exercise(conn: Any, seen: list[tuple[str, Any]]) -> None:
    """Drive one client through the app and check what it sent."""
    assert accept_client(conn)["room_id"] == "alice"
    conn.send_frame(event("new_connection", nested_context("c1", "alice", {"via": "app"})))
    assert conn.recv_frame()["params"] == {"conn_id": "c1", "message": "welcome app"}
    conn.send_frame(event("new_message", nested_context("c1", "alice", {"via": "app"}), message="hi"))
    assert [f["params"]["message"] for f in conn.recv_frames(2)] == ["echo: hi", "all: hi"]
    conn.send_frame(event("disconnected", nested_context("c1", "alice", {"via": "app"})))
    conn.send_frame(recorded("error"))
    conn.send_frame(recorded("connection_request", 1))
    assert conn.recv_frame()["params"]["accepted"] is False


@pytest.mark.parametrize(("settings", "thread_name"), [({}, "pystrands-reactor"),
                                                      ({"concurrency": 2}, "pystrands-handler")])
def test_run_blocks_and_runs_every_handler_on_the_io_thread_or_workers(
        broker: FakeBroker, settings: dict[str, Any], thread_name: str) -> None:
    app, seen = make_app(broker.port, **settings)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        conn = broker.accept()
        exercise(conn, seen)
    finally:
        app.client.disconnect()
        runner.join(WAIT)
    assert not runner.is_alive() and not app.connected
    names = [where for kind, where in seen if kind in ("request", "message")]
    assert names and all(name.startswith(thread_name) for name in names)
    assert ("new", True) in seen and ("gone", {"via": "app"}) in seen
    assert ("error", "no backend available to handle connection request") in seen


def test_run_async_runs_coroutines_on_the_loop_and_functions_in_threads(broker: FakeBroker) -> None:
    app, seen = make_app(broker.port)

    async def body() -> None:
        runner = asyncio.ensure_future(app.run_async())
        conn = await off(broker.accept)
        await off(exercise, conn, seen)
        assert app.connected
        await app.send_room_message("alice", "from the loop")
        assert (await off(conn.recv_frame))["params"]["message"] == "from the loop"
        await app.client.disconnect()
        await asyncio.wait_for(runner, WAIT)

    run(body)
    names = [where for kind, where in seen if kind in ("request", "message")]
    assert names and all(name != "MainThread" for name in names)
    assert ("new", True) in seen and ("gone", {"via": "app"}) in seen


def test_without_handlers_connections_are_accepted(broker: FakeBroker) -> None:
    app = PyStrands(port=broker.port)
    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    try:
        conn = broker.accept()
        assert accept_client(conn)["accepted"] is True
        conn.send_frame(recorded("new_message"))
        conn.assert_silent(0.2)
    finally:
        app.client.disconnect()
        runner.join(WAIT)


def test_decorating_something_else_and_bad_sends_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    globalLogPublisher.removeObserver(_forward)  # as in a fresh process: building the app bridges again
    app = PyStrands("127.0.0.1", 1)
    with pytest.raises(TypeError, match="on_message"):
        app.on_message("not a function")
    with pytest.raises(TypeError, match="room_id"):
        app.send_room_message(5, "m")
    with pytest.raises(TypeError, match="client_id"):
        app.send_private_message(None, "m")
    with pytest.raises(TypeError, match="message"):
        app.broadcast(b"bytes")
    assert app.broadcast("before run").result(WAIT) is False, "dropped, with a warning"
    assert app.send_room_message("r", "before run").result(WAIT) is False
    assert app.connected is False and app.client is None
    warned = [r.getMessage() for r in caplog.records if r.name == "pystrands._dropped"]
    assert warned == [warned[0]] and "call run() or run_async() first" in warned[0], "the first drop warns at once"

    async def begin_a_run() -> None:
        running = asyncio.ensure_future(app.run_async())
        await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    run(begin_a_run)
    warned = [r.getMessage() for r in caplog.records if r.name == "pystrands._dropped"]
    assert warned[1:] == ["1 more send(s) to the broker dropped since the last warning (not connected to the"
                          " broker: call run() or run_async() first)"], "told when the run begins"



@pytest.mark.parametrize("mode", ["run", "run_async"])
def test_a_failing_function_is_reported_by_its_own_name(broker: FakeBroker, caplog: pytest.LogCaptureFixture,
                                                         mode: str) -> None:
    app = PyStrands(port=broker.port)

    @app.on_message
    def shout(message: str, context: Context) -> None:
        raise ValueError(message)

    async def serve() -> None:
        runner = asyncio.ensure_future(app.run_async())
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("c", "r", {}), message="boom"))
        await off(conn.assert_silent, 0.3)
        await app.client.disconnect()
        await asyncio.wait_for(runner, WAIT)

    if mode == "run_async":
        run(serve)
    else:
        runner = threading.Thread(target=app.run, daemon=True)
        runner.start()
        conn = broker.accept()
        conn.send_frame(event("new_message", nested_context("c", "r", {}), message="boom"))
        conn.assert_silent(0.3)
        app.client.disconnect()
        runner.join(WAIT)
    [failed] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed.getMessage() == f"Backend handler {shout.__qualname__} failed" and failed.exc_info[0] is ValueError
