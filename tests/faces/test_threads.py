"""pystrands._threads.HandlerThreads: arrival order, results on the reactor, batched hand-backs."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, gatherResults

from pystrands._threads import HandlerThreads


class CountingReactor:
    """The real reactor, counting the hand-backs from worker threads."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.handbacks = 0

    def callFromThread(self, function: Any, *args: Any) -> None:
        self.handbacks += 1
        self.reactor.callFromThread(function, *args)


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest_twisted.ensureDeferred
async def test_one_thread_runs_calls_in_arrival_order_and_hands_back_in_batches(reactor: Any) -> None:
    counting = CountingReactor(reactor)
    threads = HandlerThreads(counting, 1, "test-handler")
    gate = threading.Event()
    ran: list[int] = []
    fired_on: set[str] = set()
    first = threads.submit(gate.wait, 5)
    results = [threads.submit(lambda n=n: ran.append(n) or n * 2) for n in range(200)]
    for result in results:
        result.addCallback(lambda value: fired_on.add(threading.current_thread().name) or value)
    gate.set()
    assert await gatherResults([first, *results]) == [True, *[n * 2 for n in range(200)]]
    assert ran == list(range(200))
    assert fired_on == {threading.main_thread().name}, "results fire on the reactor thread"
    assert counting.handbacks < 50, f"{counting.handbacks} hand-backs for 201 calls: not batched"
    assert threads.stop() == 0


@pytest_twisted.ensureDeferred
async def test_failures_reach_the_deferred_and_a_hung_call_is_reported_at_stop(reactor: Any) -> None:
    threads = HandlerThreads(reactor, 2, "test-handler")

    def boom() -> None:
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):
        await threads.submit(boom)
    hang = threading.Event()
    threads.submit(hang.wait, 10)
    while threads.running != 1:
        await gatherResults([threads.submit(lambda: None)])
    assert threads.stop() == 1, "the hung call is still running"
    with pytest.raises(RuntimeError, match="stopped"):
        threads.submit(lambda: None)
    hang.set()


@pytest_twisted.ensureDeferred
async def test_threads_start_only_as_calls_need_them_up_to_the_size(reactor: Any) -> None:
    def named() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("lazy-handler-")}

    threads = HandlerThreads(reactor, 64, "lazy-handler")
    assert named() == set(), "no call yet, no thread"
    for _ in range(20):  # one after the other: one thread serves them all
        await threads.submit(lambda: None)
    assert named() == {"lazy-handler-0"}
    together = threading.Barrier(3, timeout=5)
    await gatherResults([threads.submit(together.wait) for _ in range(3)])  # three at once need three
    assert len(named()) == 3
    threads.stop()
    small = HandlerThreads(reactor, 2, "lazy-handler-small")
    gate = threading.Event()
    held = [small.submit(gate.wait, 5) for _ in range(5)]
    assert small.running <= 2 and len({t.name for t in threading.enumerate()
                                        if t.name.startswith("lazy-handler-small-")}) == 2, "never past the size"
    gate.set()
    await gatherResults(held)
    small.stop()


@pytest_twisted.ensureDeferred
async def test_stop_fails_the_calls_it_drops_with_cancelled_error(reactor: Any) -> None:
    threads = HandlerThreads(reactor, 1, "test-dropped")
    entered, gate = threading.Event(), threading.Event()
    busy = threads.submit(lambda: entered.set() or gate.wait(5))
    assert entered.wait(5)  # the one thread has taken the first call: the next ones wait in the queue
    waiting = [threads.submit(lambda: None) for _ in range(3)]
    assert threads.stop() == 1
    for result in waiting:
        with pytest.raises(CancelledError, match="stopped before this call started"):
            await result
    gate.set()
    assert await busy is True
