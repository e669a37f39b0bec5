"""AsyncPyStrandsClient against the fake broker: callbacks, sends, tasks, loops, reconnects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
import time
from typing import Any, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry
from twisted.logger import globalLogPublisher

from pystrands import AsyncPyStrandsClient, Context
from pystrands.logbridge import _forward
from tests.faces.conftest import accept_client, answer_like_the_reference, backend_frames, event, nested_context, recorded
from tests.support.fakebroker import FakeBroker

WAIT = 5.0


def run(body: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Run a test body under asyncio.run, bounded in time."""
    return asyncio.run(asyncio.wait_for(body(), timeout))


async def off(function: Callable[..., Any], *args: Any) -> Any:
    """A blocking fake-broker call, off the loop."""
    return await asyncio.to_thread(function, *args)


class Recorder(AsyncPyStrandsClient):
    """Records every callback (with its task) and answers like the reference backend did."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def next_event(self) -> tuple[Any, ...]:
        return await asyncio.wait_for(self.events.get(), WAIT)

    async def on_connection_request(self, request: Any) -> bool:
        await asyncio.sleep(0)
        self.events.put_nowait(("request", request, asyncio.current_task()))
        return answer_like_the_reference(request)

    async def on_new_connection(self, context: Context) -> None:
        self.events.put_nowait(("new", context, asyncio.current_task()))

    async def on_message(self, message: str, context: Context) -> None:
        self.events.put_nowait(("message", message, context, asyncio.current_task()))
        await self.send_room_message(context.room_id, f"room:{message}")
        await self.send_private_message(context.client_id, f"private:{message}")
        await self.broadcast_message(f"all:{message}")

    async def on_disconnect(self, context: Context) -> None:
        self.events.put_nowait(("gone", context, asyncio.current_task()))

    async def on_error(self, error: str, context: Context) -> None:
        self.events.put_nowait(("error", error, context, asyncio.current_task()))


def params(frames: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(frame["action"], frame["params"]) for frame in frames]


def test_the_transcript_through_every_callback(broker: FakeBroker) -> None:
    async def body() -> None:
        client = Recorder(host="localhost", port=broker.port)
        assert await client.connect() is True and client.connected is True
        conn = await off(broker.accept)
        threads_before = threading.active_count()

        conn.send_frame(recorded("connection_request"))
        reply = await off(conn.recv_frame)
        assert reply["params"] == {"accepted": True, "client_id": "client-alice", "room_id": "lobby",
                                   "metadata": {"user": "alice"}} == backend_frames("1.")[0]["params"]
        kind, request, task = await client.next_event()
        assert task is not None and request.headers["X-Token"] == ["ok"]

        conn.send_frame(recorded("new_connection"))
        kind, context, task = await client.next_event()
        assert (kind, context.client_id, context.room_id, context.metadata) == (
            "new", "client-alice", "lobby", {"user": "alice"})

        for index, scenario in ((0, "2."), (1, "3.")):
            conn.send_frame(recorded("new_message", index))
            kind, message, context, task = await client.next_event()
            assert task is not None and context.metadata == {"user": "alice"}
            assert params(await off(conn.recv_frames, 3)) == params(backend_frames(scenario))

        conn.send_frame(recorded("connection_request", 1))
        assert (await off(conn.recv_frame))["params"]["accepted"] is False
        await client.next_event()

        conn.send_frame(recorded("disconnected"))
        kind, context, _ = await client.next_event()
        assert (kind, context.client_id, context.metadata) == ("gone", "client-alice", {"user": "alice"})

        conn.send_frame(recorded("error"))
        kind, error, context, _ = await client.next_event()
        assert error == "no backend available to handle connection request"
        assert threading.active_count() <= threads_before + 1  # no I/O thread (at most asyncio's executor)
        await client.disconnect()
        await off(conn.wait_closed)

    run(body)


def test_plain_def_overrides_work_on_the_loop(broker: FakeBroker) -> None:
    class Plain(AsyncPyStrandsClient):
        def on_connection_request(self, request: Any) -> None:
            request.accepted = request.url.endswith("ok")

        def on_message(self, message: str, context: Context) -> None:
            assert threading.current_thread() is threading.main_thread()
            self.send_room_message(context.room_id, message.upper())

    async def body() -> None:
        client = Plain(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        assert (await off(accept_client, conn, "r1", "/ws/ok"))["accepted"] is True
        assert (await off(accept_client, conn, "r2", "/ws/no"))["accepted"] is False
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="hey"))
        assert (await off(conn.recv_frame))["params"] == {"room_id": "r", "message": "HEY"}
        await client.disconnect()

    run(body)


def test_defaults_accept_and_ignore_events(broker: FakeBroker) -> None:
    async def body() -> None:
        client = AsyncPyStrandsClient(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        reply = await off(accept_client, conn, "r1", "/ws/room9")
        assert reply["accepted"] is True and reply["room_id"] == "/ws/room9"
        for action in ("new_connection", "new_message", "disconnected", "error"):
            conn.send_frame(recorded(action))
        await off(conn.assert_silent, 0.3)
        assert await AsyncPyStrandsClient().on_connection_request(None) is True
        await client.disconnect()

    run(body)


def test_a_slow_await_does_not_stall_other_clients_and_order_holds(broker: FakeBroker) -> None:
    seen: list[tuple[str, str]] = []

    class Mixed(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            await asyncio.sleep(1.0 if context.client_id == "slow" else 0.01)
            seen.append((context.client_id, message))
            await self.send_private_message(context.client_id, message)

    async def body() -> None:
        client = Mixed(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("slow", "r", {}), message="s"))
        for n in range(5):
            conn.send_frame(event("new_message", nested_context("fast", "r", {}), message=str(n)))
        started = time.monotonic()
        frames = await off(conn.recv_frames, 5)
        assert time.monotonic() - started < 0.9
        assert [f["params"]["message"] for f in frames] == ["0", "1", "2", "3", "4"]
        await client.disconnect()
        assert ("slow", "s") in seen  # disconnect waited for it

    run(body)


def test_sends_from_foreign_threads_and_on_the_loop(broker: FakeBroker) -> None:
    async def body() -> None:
        client = AsyncPyStrandsClient(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        on_loop = client.broadcast_message("on the loop")
        assert isinstance(on_loop, asyncio.Future)
        assert await on_loop is True

        def from_threads() -> list[Any]:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = list(pool.map(lambda n: client.send_room_message("r", f"m{n}"), range(100)))
            return [f.result(WAIT) for f in futures]

        assert await off(from_threads) == [True] * 100
        received = [frame["params"]["message"] for frame in await off(conn.recv_frames, 101)]
        assert received[0] == "on the loop"
        assert sorted(received[1:]) == sorted(f"m{n}" for n in range(100))
        await client.disconnect()

    run(body)


def test_disconnect_cancels_handlers_still_running_at_its_deadline_and_waits_for_them(
        broker: FakeBroker, caplog: pytest.LogCaptureFixture) -> None:
    unwound: list[str] = []

    class Hung(AsyncPyStrandsClient):
        entered: asyncio.Event

        async def on_message(self, message: str, context: Context) -> None:
            self.entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # unwinding takes a while, within the grace
                unwound.append(message)
                raise

    async def body() -> None:
        client = Hung(port=broker.port)
        client.entered = asyncio.Event()
        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="stuck"))
        await asyncio.wait_for(client.entered.wait(), WAIT)
        started = time.monotonic()
        await client.disconnect(timeout=0.3)
        assert unwound == ["stuck"], "cancelled at the deadline, and finished unwinding before disconnect returned"
        assert 0.3 <= time.monotonic() - started < 2.0
        assert not client.connected
        await off(conn.wait_closed)

    run(body)
    assert not [r for r in caplog.records if "left to finish alone" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a cancel at the deadline is no failure"


def test_a_handler_returning_another_awaitable_is_cancelled_at_the_deadline_too(broker: FakeBroker) -> None:
    cancelled: list[bool] = []

    class Pending(AsyncPyStrandsClient):
        def on_message(self, message: str, context: Context) -> Any:
            future = asyncio.get_running_loop().create_future()  # an awaitable that is not a coroutine
            future.add_done_callback(lambda done: cancelled.append(done.cancelled()))
            return future

    async def body() -> None:
        client = Pending(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="never answered"))
        await off(conn.assert_silent, 0.1)
        started = time.monotonic()
        await client.disconnect(timeout=0.2)
        assert cancelled == [True], "cancelled at the deadline, before disconnect() returned"
        assert time.monotonic() - started < 2.0

    run(body)


@pytest.mark.parametrize("settings", [{}, {"metrics_registry": CollectorRegistry()}], ids=["plain", "metrics"])
def test_a_failing_handler_is_reported_by_the_face_method_that_failed(broker: FakeBroker,
                                                                        caplog: pytest.LogCaptureFixture,
                                                                        settings: dict[str, Any]) -> None:
    class Failing(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            await asyncio.sleep(0)
            raise ValueError(message)

    async def body() -> None:
        client = Failing(port=broker.port, **settings)
        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="boom"))
        await off(conn.assert_silent, 0.2)
        await client.disconnect()

    run(body)
    [failed] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    qualname = "test_a_failing_handler_is_reported_by_the_face_method_that_failed.<locals>.Failing.on_message"
    assert failed.getMessage() == f"Backend handler {qualname} failed" and failed.exc_info[0] is ValueError


def test_disconnect_gives_a_handler_that_ignores_its_cancel_a_short_grace_then_warns(
        broker: FakeBroker, caplog: pytest.LogCaptureFixture) -> None:
    class Stubborn(AsyncPyStrandsClient):
        entered: asyncio.Event

        async def on_message(self, message: str, context: Context) -> None:
            self.entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await asyncio.sleep(3)  # longer than the grace

    async def body() -> None:
        client = Stubborn(port=broker.port)
        client.entered = asyncio.Event()
        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="stuck"))
        await asyncio.wait_for(client.entered.wait(), WAIT)
        started = time.monotonic()
        await client.disconnect(timeout=0.2)
        assert time.monotonic() - started < 2.0, "bounded by the deadline and the grace"
        assert not client.connected

    run(body)
    assert [r for r in caplog.records if "left to finish alone" in r.getMessage()]


@pytest.mark.parametrize(
    ("method", "args", "name"),
    [
        ("send_room_message", (1, "m"), "room_id"),
        ("send_room_message", ("r", None), "message"),
        ("send_private_message", (None, "m"), "client_id"),
        ("send_private_message", ("id", 7), "message"),
        ("broadcast_message", ([],), "message"),
    ],
)
def test_bad_send_arguments_raise_at_the_call(broker: FakeBroker, method: str, args: tuple,
                                              name: str) -> None:
    async def body() -> None:
        client = AsyncPyStrandsClient(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        with pytest.raises(TypeError, match=name):
            getattr(client, method)(*args)  # not even awaited: refused at the call
        await off(conn.assert_silent, 0.2)
        await client.disconnect()

    run(body)


def test_sends_when_not_connected_resolve_false_with_a_warning(broker: FakeBroker,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    globalLogPublisher.removeObserver(_forward)  # as in a fresh process: building the client bridges again

    async def body() -> None:
        client = AsyncPyStrandsClient(port=broker.port)
        assert await client.broadcast_message("too early") is False
        assert await client.connect()
        conn = await off(broker.accept)
        await client.disconnect()
        assert await client.send_room_message("r", "too late") is False
        assert await client.send_private_message("c", "too late") is False
        await off(conn.assert_silent, 0.2)

    run(body)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and "connect() or run_forever() first" in dropped[0], "the first drop is logged at once"

    run(body)


def test_connect_returns_false_quickly_without_a_broker(free_port: int) -> None:
    async def body() -> None:
        client = AsyncPyStrandsClient(host="localhost", port=free_port, auto_reconnect=False)
        started = time.monotonic()
        assert await client.connect() is False
        assert time.monotonic() - started < 3.0 and client.connected is False
        await client.disconnect(timeout=0.5)

    run(body)


def test_disconnect_waits_for_in_flight_handlers_up_to_timeout(broker: FakeBroker) -> None:
    class Sleeper(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            await asyncio.sleep(float(message))
            await self.send_room_message(context.room_id, f"slept {message}")

    async def body() -> None:
        client = Sleeper(port=broker.port)
        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="0.3"))
        await asyncio.sleep(0.1)
        await client.disconnect(timeout=5.0)
        assert (await off(conn.recv_frame))["params"]["message"] == "slept 0.3"
        await off(conn.wait_closed)

        assert await client.connect()
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="30"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await client.disconnect(timeout=0.2)
        assert time.monotonic() - started < 3.0
        await off(conn.wait_closed)

    run(body)


def test_disconnect_from_a_handler_ends_run_forever(broker: FakeBroker) -> None:
    class Quitter(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            await self.disconnect()

    async def body() -> None:
        client = Quitter(port=broker.port)
        runner = asyncio.ensure_future(client.run_forever())
        conn = await off(broker.accept)
        conn.send_frame(event("new_message", nested_context("a", "r", {}), message="quit"))
        await asyncio.wait_for(runner, WAIT)
        await off(conn.wait_closed)

    run(body)


def test_run_forever_ends_on_disconnect_and_reraises_a_cancel_after_closing(broker: FakeBroker) -> None:
    async def body() -> None:
        client = Recorder(port=broker.port)
        runner = asyncio.ensure_future(client.run_forever())
        conn = await off(broker.accept)
        await client.disconnect()
        await asyncio.wait_for(runner, WAIT)
        await off(conn.wait_closed)
        runner = asyncio.ensure_future(client.run_forever())
        conn = await off(broker.accept)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(runner, WAIT)
        assert runner.cancelled() and not client.connected
        await off(conn.wait_closed)

    run(body)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_run_forever_under_asyncio_timeout_raises_timeout_error_after_closing(broker: FakeBroker) -> None:
    async def body() -> None:
        client = Recorder(port=broker.port)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await client.run_forever()
        assert not client.connected
        await off(broker.accept().wait_closed)

    run(body)


def test_run_forever_under_wait_for_raises_timeout_error_after_closing(broker: FakeBroker) -> None:
    async def body() -> None:
        client = Recorder(port=broker.port)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.run_forever(), 0.5)
        assert not client.connected
        await off(broker.accept().wait_closed)

    run(body)


def test_run_forever_waits_for_a_late_broker_and_survives_its_restart(free_port: int) -> None:
    async def body() -> None:
        client = Recorder(host="localhost", port=free_port, reconnect_delay=0.05, max_reconnect_delay=0.2)
        runner = asyncio.ensure_future(client.run_forever())
        await asyncio.sleep(0.5)
        assert not runner.done() and not client.connected
        with FakeBroker(port=free_port) as late:
            conn = await off(late.accept)
            assert (await off(accept_client, conn))["client_id"] == "client-alice"
            await client.next_event()
        while client.connected:
            await asyncio.sleep(0.01)
        pending = client.send_room_message("lobby", "sent while the broker is down")
        with FakeBroker(port=free_port) as again:
            conn = await off(again.accept)
            assert (await off(conn.recv_frame))["params"]["message"] == "sent while the broker is down"
            assert await pending is True
            conn.send_frame(recorded("new_message"))
            assert (await client.next_event())[1] == "hello"
            await client.disconnect()
            await asyncio.wait_for(runner, WAIT)

    run(body)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_three_asyncio_runs_in_a_row_leak_nothing(broker: FakeBroker) -> None:
    client = Recorder(host="localhost", port=broker.port)

    async def body(n: int) -> None:
        fresh = Recorder(host="localhost", port=broker.port)
        assert await client.connect() and await fresh.connect()
        conns = [await off(broker.accept) for _ in range(2)]
        for conn in conns:
            assert (await off(accept_client, conn, f"r{n}"))["accepted"] is True
        await client.disconnect()
        await fresh.disconnect()
        for conn in conns:
            await off(conn.wait_closed)
            conn.close()

    run(lambda: body(0))
    before = open_fds()
    for n in range(1, 4):
        run(lambda: body(n))
    assert open_fds() <= before + 2


def test_two_clients_on_one_loop(broker: FakeBroker) -> None:
    async def body() -> None:
        with FakeBroker() as other:
            first, second = Recorder(port=broker.port), Recorder(port=other.port)
            assert await first.connect() and await second.connect()
            conn1, conn2 = await off(broker.accept), await off(other.accept)
            conn1.send_frame(recorded("new_message"))
            conn2.send_frame(recorded("new_message"))
            assert len(await off(conn1.recv_frames, 3)) == len(await off(conn2.recv_frames, 3)) == 3
            await first.disconnect()
            assert second.connected and not first.connected
            await second.disconnect()

    run(body)


def test_a_client_left_connected_by_a_finished_asyncio_run_connects_again(broker: FakeBroker) -> None:
    client = AsyncPyStrandsClient(port=broker.port)

    async def connect_only() -> None:
        assert await client.connect()
        await off(broker.accept)

    run(connect_only)
    assert client.connected is False  # its loop is gone
    for _ in range(2):  # sends are dropped at once, none is left waiting for a loop that is gone
        assert client.broadcast_message("to a closed loop").result(5.0) is False

    async def again() -> None:
        assert await client.connect()
        conn = await off(broker.accept)
        assert (await off(accept_client, conn))["accepted"] is True
        assert await off(lambda: client.broadcast_message("from a thread").result(5.0)) is True
        assert (await off(conn.recv_frame))["params"] == {"message": "from a thread"}
        await client.disconnect()

    run(again)
