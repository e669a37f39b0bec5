"""KeyedDispatcher on its own: order per key, the concurrency bound, and how results settle."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from pystrands.dispatch import KeyedDispatcher


def dispatcher(concurrency: int = 4) -> KeyedDispatcher:
    return KeyedDispatcher(concurrency, max_events=100, max_bytes=1 << 20,
                           on_busy=lambda: None, on_idle=lambda: None)


def test_a_send_that_already_succeeded_frees_the_key_at_once() -> None:
    d = dispatcher()
    ran: list[str] = []
    d.submit("c1", 1, lambda: (ran.append("first"), succeed(None))[1])
    d.submit("c1", 1, lambda: ran.append("second"))
    assert ran == ["first", "second"]
    assert d.pending_events == 0 and d.drained().called


def test_an_already_failed_deferred_is_reported_and_frees_the_key(logged: list[dict[str, Any]]) -> None:
    d = dispatcher()
    d.submit("c1", 1, lambda: fail(ValueError("boom")))
    assert d.pending_events == 0
    failures = [event for event in logged if "log_failure" in event]
    assert len(failures) == 1 and failures[0]["log_failure"].check(ValueError)


def test_a_fired_but_paused_deferred_holds_the_key_until_unpaused() -> None:
    d = dispatcher()
    held = succeed(None)
    held.pause()
    ran: list[str] = []
    d.submit("c1", 1, lambda: held)
    d.submit("c1", 1, lambda: ran.append("next"))
    d.submit("c2", 1, lambda: ran.append("other client"))
    assert ran == ["other client"] and d.pending_events == 2
    held.unpause()
    assert ran == ["other client", "next"] and d.pending_events == 0


def test_a_deferred_that_waits_on_another_holds_the_key() -> None:
    d = dispatcher()
    inner: Deferred[None] = Deferred()
    outer = succeed(None).addCallback(lambda _: inner)  # fired, chained to an unfired one
    ran: list[str] = []
    d.submit("c1", 1, lambda: outer)
    d.submit("c1", 1, lambda: ran.append("next"))
    assert ran == []
    inner.callback(None)
    assert ran == ["next"]


def test_order_per_key_and_the_concurrency_bound() -> None:
    d = dispatcher(concurrency=2)
    gates = {key: [Deferred() for _ in range(2)] for key in ("a", "b", "c")}
    started: list[tuple[str, int]] = []

    def handler(key: str, number: int) -> Deferred[None]:
        started.append((key, number))
        return gates[key][number]

    for number in range(2):
        for key in ("a", "b", "c"):
            d.submit(key, 1, handler, key, number)
    assert started == [("a", 0), ("b", 0)]  # two at once; c waits for a slot
    gates["a"][0].callback(None)
    assert started[2:] == [("c", 0)]  # c was first in line, ahead of a's next event
    gates["b"][0].callback(None)
    gates["c"][0].callback(None)
    assert sorted(started[3:]) == [("a", 1), ("b", 1)]
    for key in ("a", "b", "c"):
        gates[key][1].callback(None)
    assert started[-1] == ("c", 1) and d.pending_events == 0


def test_coroutine_results_hold_the_key_until_they_return() -> None:
    d = dispatcher()
    gate: Deferred[None] = Deferred()
    ran: list[str] = []

    async def slow() -> None:
        await gate
        ran.append("slow done")

    d.submit("c1", 1, slow)
    d.submit("c1", 1, lambda: ran.append("next"))
    assert ran == []
    gate.callback(None)
    assert ran == ["slow done", "next"]


def test_a_call_submitted_from_inside_a_handler_of_its_key_runs_after_that_handler() -> None:
    d = dispatcher()
    ran: list[str] = []

    def outer() -> None:
        d.submit("c1", 1, lambda: ran.append("inner"))
        d.submit("c2", 1, lambda: ran.append("other key"))
        ran.append("outer ends")

    d.submit("c1", 1, outer)
    assert ran == ["other key", "outer ends", "inner"]
    assert d.pending_events == 0 and d.pending_bytes == 0 and d.drained().called


def test_a_drain_asked_for_inside_a_handler_fires_once_that_handler_is_done() -> None:
    d = dispatcher()
    drains: list[Deferred[None]] = []

    def handler() -> None:
        drains.append(d.drained())
        assert not drains[0].called  # this very call still runs

    d.submit("c1", 1, handler)
    assert drains[0].called


def test_a_call_done_at_once_never_counts_as_waiting() -> None:
    busy: list[bool] = []
    d = KeyedDispatcher(4, max_events=1, max_bytes=1 << 20, on_busy=lambda: busy.append(True),
                        on_idle=lambda: busy.append(False))
    for _ in range(5):
        d.submit("c1", 10, lambda: succeed(None))
    assert busy == [] and d.pending_events == 0
    waiting: Deferred[None] = Deferred()
    d.submit("c1", 10, lambda: waiting)
    assert busy == [True] and d.pending_events == 1 and d.pending_bytes == 10
    waiting.callback(None)
    assert busy == [True, False] and d.pending_events == 0


def test_a_coroutine_done_in_its_first_step_never_makes_the_dispatcher_busy() -> None:
    busy: list[bool] = []
    d = KeyedDispatcher(4, max_events=1, max_bytes=1 << 20, on_busy=lambda: busy.append(True),
                        on_idle=lambda: busy.append(False))

    async def handler() -> None:
        return None

    d.submit("c1", 10, handler)
    assert busy == [] and d.pending_events == 0 and d.drained().called
