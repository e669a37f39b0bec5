"""Each extension request through each face against the embedded broker, a real ``python -m pystrands server``.

WebSocket clients connect with ``websockets``; the backend face (in this
process) names them after their ``?id=`` and puts them in room ``lobby``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from pystrands import AsyncPyStrandsClient, Context, NotSupportedError, PyStrands, PyStrandsClient
from tests.demo.support import Broker, launching, start_broker

WAIT = 5.0
Call = Callable[..., Any]


def judge(request: Any) -> bool:
    request.context.client_id = request.query["id"][0]
    request.context.room_id = "lobby"
    request.context.metadata = {"id": request.query["id"][0]}
    return True


class Blocking(PyStrandsClient):
    def on_connection_request(self, request: Any) -> bool:
        return judge(request)


class Async(AsyncPyStrandsClient):
    async def on_connection_request(self, request: Any) -> bool:
        return judge(request)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with launching(tmp_path, grace=10.0) as launch:
        yield start_broker(launch)


class LoopThread:
    """An asyncio loop in a thread, for driving the asyncio faces from this (blocking) test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, awaitable_factory: Callable[[], Any], timeout: float = WAIT) -> Any:
        async def body() -> Any:
            return await awaitable_factory()
        return asyncio.run_coroutine_threadsafe(body(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(params=["blocking", "async", "app-run", "app-run-async"])
def face(request: pytest.FixtureRequest, broker: Broker) -> Iterator[Call]:
    """call(method, *args) -> the result, through one face connected to ``broker``."""
    kind = request.param
    port = broker.tcp_port
    if kind == "blocking":
        client = Blocking(port=port)
        assert client.connect()
        yield lambda name, *args: getattr(client, name)(*args).result(WAIT)
        client.disconnect()
    elif kind == "async":
        loop = LoopThread()
        aclient = Async(port=port)
        assert loop.run(aclient.connect)
        yield lambda name, *args: loop.run(lambda: getattr(aclient, name)(*args))
        loop.run(aclient.disconnect)
        loop.close()
    elif kind == "app-run":
        app = PyStrands(port=port)
        app.on_connection_request(judge)
        runner = threading.Thread(target=app.run, daemon=True)
        runner.start()
        deadline = time.monotonic() + WAIT
        while not app.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        yield lambda name, *args: getattr(app, name)(*args).result(WAIT)
        assert app.client is not None
        app.client.disconnect()
        runner.join(WAIT)
    else:
        loop = LoopThread()
        app = PyStrands(port=port)
        app.on_connection_request(judge)
        running = asyncio.run_coroutine_threadsafe(app.run_async(), loop.loop)
        deadline = time.monotonic() + WAIT
        while not app.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        yield lambda name, *args: loop.run(lambda: getattr(app, name)(*args))
        assert isinstance(app.client, AsyncPyStrandsClient)
        loop.run(app.client.disconnect)
        running.result(WAIT)
        loop.close()


def members_of(call: Call, room: str, count: int) -> list[Context]:
    """room_members until it has ``count`` members (the hello and new connections arrive on their own time)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            members: list[Context] = call("room_members", room)
        except NotSupportedError:
            members = []
        if len(members) == count or time.monotonic() > deadline:
            return sorted(members, key=lambda m: m.client_id)
        time.sleep(0.05)


def client(broker: Broker, client_id: str) -> ClientConnection:
    return connect(f"{broker.ws_url}/lobby?id={client_id}", open_timeout=WAIT)


def test_every_request_through_the_face(broker: Broker, face: Call) -> None:
    with client(broker, "a") as a, client(broker, "b") as b:
        members = members_of(face, "lobby", 2)
        assert [(m.client_id, m.room_id, m.rooms, m.metadata) for m in members] == [
            ("a", "lobby", ["lobby"], {"id": "a"}), ("b", "lobby", ["lobby"], {"id": "b"})]
        assert face("room_members", "nowhere") == []

        assert face("set_metadata", "a", {"name": "ann"}) is True
        assert members_of(face, "lobby", 2)[0].metadata == {"name": "ann"}

        assert face("join_room", "a", "game-7") is True
        (joined,) = members_of(face, "game-7", 1)
        assert joined.client_id == "a" and joined.rooms == ["lobby", "game-7"] and joined.room_id == "lobby"
        assert face("send_room_message", "game-7", "to the game") is True
        assert a.recv(timeout=WAIT) == "to the game"

        assert face("leave_room", "a", "game-7") is True
        assert face("room_members", "game-7") == []
        assert face("leave_room", "a", "lobby") is True  # in no room at all, and still connected
        assert [m.client_id for m in face("room_members", "lobby")] == ["b"]

        assert face("join_room", "nobody", "x") is False
        assert face("disconnect_client", "nobody") is False
        with pytest.raises(ValueError, match="code"):
            face("disconnect_client", "b", 1005)
        assert face("disconnect_client", "b", 4001, "bye") is True
        with pytest.raises(ConnectionClosed):
            b.recv(timeout=WAIT)
        assert (b.close_code, b.close_reason) == (4001, "bye")
