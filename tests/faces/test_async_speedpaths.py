"""AsyncPyStrandsClient's fast paths: a handler's first step runs within the read, sends already done.

A coroutine handler starts as a task whose first step runs at once, inside
the read that brought its event; a send written at once returns one shared,
already-done future, so awaiting it does not suspend. These tests check that
both keep what handlers rely on: a current task, asyncio.timeout() and
TaskGroup, failures logged once, per-client order, usable futures, and the
handler mark that keeps disconnect() from waiting for its own caller.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
import traceback
from typing import Any

import pytest

from pystrands import AsyncPyStrandsClient, Context
from pystrands._tasks import start_task
from tests.faces.conftest import event, nested_context
from tests.faces.test_async import WAIT, off, run
from tests.support.fakebroker import BackendConnection, FakeBroker


def message(text: str, client_id: str = "c") -> dict[str, Any]:
    return event("new_message", nested_context(client_id, "r", {}), message=text)


def in_a_read() -> bool:
    """True when called within a read of the broker connection (its protocol's dataReceived, IProtocol's)."""
    return any(frame.name == "dataReceived" for frame in traceback.extract_stack())


async def connected(client: AsyncPyStrandsClient, broker: FakeBroker) -> BackendConnection:
    assert await client.connect()
    return await off(broker.accept)


def test_a_handler_runs_its_first_step_within_the_read_of_its_event(broker: FakeBroker) -> None:
    seen: list[Any] = []

    class Tracing(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            seen.append(("handler", message, asyncio.current_task() is not None, in_a_read()))
            sent = self.send_private_message(context.client_id, message)
            seen.append(("send done at once", sent.done()))
            await sent
            seen.append(("after the send", message, in_a_read()))
            if message == "suspends":
                await asyncio.sleep(0)
                seen.append(("resumed", message, in_a_read()))

    async def body() -> None:
        client = Tracing(port=broker.port)
        conn = await connected(client, broker)
        conn.send_frame(message("eager"))
        assert (await off(conn.recv_frame))["params"]["message"] == "eager"
        assert seen == [("handler", "eager", True, True), ("send done at once", True), ("after the send", "eager", True)]
        seen.clear()
        conn.send_frame(message("suspends"))
        assert (await off(conn.recv_frame))["params"]["message"] == "suspends"
        while len(seen) < 4:
            await asyncio.sleep(0.01)
        assert seen == [("handler", "suspends", True, True), ("send done at once", True),
                        ("after the send", "suspends", True), ("resumed", "suspends", False)]
        await client.disconnect()

    run(body)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() and TaskGroup are new in 3.11")
def test_timeout_task_group_and_current_task_work_before_and_after_suspending(broker: FakeBroker) -> None:
    seen: list[Any] = []

    class Structured(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            task = asyncio.current_task()
            async with asyncio.timeout(5):
                await self.send_private_message(context.client_id, "within a timeout")
            seen.append(("first step", in_a_read(), asyncio.current_task() is task))
            async with asyncio.TaskGroup() as group:
                child = group.create_task(self.child(task))
            seen.append(("task group", in_a_read(), child.result(), asyncio.current_task() is task))
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(WAIT)
            except TimeoutError:
                seen.append(("timed out", asyncio.current_task() is task, task.cancelling()))
            await self.send_private_message(context.client_id, "done")

        async def child(self, parent: asyncio.Task) -> bool:
            await asyncio.sleep(0)
            return asyncio.current_task() not in (None, parent)

    async def body() -> None:
        client = Structured(port=broker.port)
        conn = await connected(client, broker)
        conn.send_frame(message("go"))
        frames = await off(conn.recv_frames, 2)
        assert [f["params"]["message"] for f in frames] == ["within a timeout", "done"]
        assert seen == [("first step", True, True), ("task group", False, True, True), ("timed out", True, 0)]
        await client.disconnect()

    run(body)


@pytest.mark.parametrize("suspend", [False, True], ids=["in the first step", "after suspending"])
def test_a_failing_handler_is_logged_once_and_the_clients_next_event_runs(
        broker: FakeBroker, caplog: pytest.LogCaptureFixture, suspend: bool) -> None:
    class Failing(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            if suspend:
                await asyncio.sleep(0)
            if message == "boom":
                raise ValueError("handler bug")
            await self.send_private_message(context.client_id, "next: " + message)

    async def body() -> None:
        client = Failing(port=broker.port)
        conn = await connected(client, broker)
        conn.send_frame(message("boom"))
        conn.send_frame(message("runs"))
        assert (await off(conn.recv_frame))["params"]["message"] == "next: runs"
        gc.collect()  # a task whose exception nobody retrieved would be reported now
        await asyncio.sleep(0.05)
        await client.disconnect()

    with caplog.at_level(logging.WARNING):
        run(body)
    failures = [r for r in caplog.records if r.name == "pystrands.dispatch"]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert failures[0].exc_info[0] is ValueError
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_order_per_client_holds_when_the_first_event_suspends_and_the_next_would_not(
        broker: FakeBroker) -> None:
    seen: list[str] = []

    class Ordered(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            if message == "slow":
                await asyncio.sleep(0.2)
            seen.append(message)
            await self.send_private_message(context.client_id, message)

    async def body() -> None:
        client = Ordered(port=broker.port)
        conn = await connected(client, broker)
        for text, client_id in (("slow", "c"), ("fast", "c"), ("other", "d"), ("last", "c")):
            conn.send_frame(message(text, client_id))
        frames = await off(conn.recv_frames, 4)
        assert [f["params"]["message"] for f in frames] == ["other", "slow", "fast", "last"]
        assert seen == ["other", "slow", "fast", "last"]
        await client.disconnect()

    run(body)


def test_the_shared_done_send_future_behaves_as_a_future(broker: FakeBroker) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        client = AsyncPyStrandsClient(port=broker.port)
        conn = await connected(client, broker)
        first, second = client.broadcast_message("1"), client.send_room_message("r", "2")
        assert isinstance(first, asyncio.Future) and first.done() and second.done()
        assert first.get_loop() is loop
        assert await first is True and await first is True and await second is True
        assert await asyncio.gather(first, second, first) == [True, True, True]
        assert await asyncio.wait_for(second, 1) is True and await asyncio.shield(first) is True
        called = loop.create_future()
        first.add_done_callback(called.set_result)
        assert await asyncio.wait_for(called, WAIT) is first
        assert first.cancel() is False and not first.cancelled() and first.result() is True
        assert await client.broadcast_message("3") is True
        assert [f["params"]["message"] for f in await off(conn.recv_frames, 3)] == ["1", "2", "3"]
        await client.disconnect()

    run(body)


def test_a_send_while_reconnecting_is_pending_then_written_or_dropped(broker: FakeBroker) -> None:
    async def lose(client: AsyncPyStrandsClient, conn: BackendConnection) -> None:
        conn.close()
        while client.connected:
            await asyncio.sleep(0.005)

    async def body() -> None:
        client = AsyncPyStrandsClient(port=broker.port, reconnect_delay=0.5, max_reconnect_delay=0.5)
        conn = await connected(client, broker)
        await lose(client, conn)
        buffered = client.broadcast_message("while away")
        assert not buffered.done()
        conn = await off(broker.accept)
        assert await asyncio.wait_for(buffered, WAIT) is True
        assert (await off(conn.recv_frame))["params"]["message"] == "while away"
        await lose(client, conn)
        doomed = client.broadcast_message("never written")
        assert not doomed.done()
        await client.disconnect()
        assert await asyncio.wait_for(doomed, WAIT) is False, "dropped by the disconnect"

    run(body)


def test_a_send_from_another_loop_gives_a_future_of_that_loop(broker: FakeBroker) -> None:
    async def body() -> None:
        client = AsyncPyStrandsClient(port=broker.port)
        conn = await connected(client, broker)

        async def elsewhere() -> Any:
            sent = client.broadcast_message("from another loop")
            assert sent.get_loop() is asyncio.get_running_loop()
            return await sent

        assert await off(asyncio.run, elsewhere()) is True
        assert (await off(conn.recv_frame))["params"]["message"] == "from another loop"
        await client.disconnect()

    run(body)


@pytest.mark.parametrize("where", ["first step", "after suspending", "task it created"])
def test_disconnect_from_a_handler_does_not_wait_for_the_handler(broker: FakeBroker, where: str) -> None:
    class Quitter(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            if where == "after suspending":
                await asyncio.sleep(0.01)
            if where == "task it created":
                await asyncio.create_task(self.disconnect())
            else:
                await self.disconnect()

    async def body() -> None:
        client = Quitter(port=broker.port)
        runner = asyncio.ensure_future(client.run_forever())
        conn = await off(broker.accept)
        started = time.monotonic()
        conn.send_frame(message("quit"))
        await asyncio.wait_for(runner, WAIT)
        assert time.monotonic() - started < 3.0  # waiting for itself would take disconnect's 5 s
        await off(conn.wait_closed)

    run(body)


def test_system_exit_from_a_handlers_first_step_still_stops_the_loop(
        broker: FakeBroker, caplog: pytest.LogCaptureFixture) -> None:
    class Exiting(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Context) -> None:
            raise SystemExit(message)

    async def body() -> None:
        client = Exiting(port=broker.port)
        conn = await connected(client, broker)
        conn.send_frame(message("bye"))
        await asyncio.sleep(WAIT)

    started = time.monotonic()
    with pytest.raises(SystemExit, match="bye"):
        run(body)
    assert time.monotonic() - started < WAIT
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not [r for r in caplog.records if "failed" in r.getMessage()], "not logged as a handler failure too"


def test_a_task_starts_at_once_from_a_loop_callback_and_a_task_factory_keeps_its_say() -> None:
    async def handler(seen: list[Any]) -> str:
        seen.append(asyncio.current_task())
        return "done"

    async def body() -> None:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []
        started = loop.create_future()
        loop.call_soon(lambda: started.set_result(start_task(loop, handler(seen))))
        task = await started
        assert task.done() and task.result() == "done" and seen == [task]

        made: list[asyncio.Task] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
            made.append(asyncio.Task(coro, loop=loop, **kwargs))
            return made[-1]

        loop.set_task_factory(factory)
        try:
            later = loop.create_future()
            loop.call_soon(lambda: later.set_result(start_task(loop, handler(seen))))
            task = await later
        finally:
            loop.set_task_factory(None)
        assert task is made[0] and await task == "done"

    run(body)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 starts a task eagerly inside another task too")
def test_inside_a_running_task_the_first_step_is_left_to_the_loop() -> None:
    async def handler() -> str:
        return "done"

    async def body() -> None:
        task = start_task(asyncio.get_running_loop(), handler())
        assert not task.done()
        assert await task == "done"

    run(body)
