"""The dispatcher's fast path and the simulator's reply counter, by random schedules checked against what
each promises (order per key, the concurrency bound, drains, busy and idle); a stop from inside a handler;
the new_message builder's errors."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from pystrands import Backend, wire
from pystrands.dispatch import KeyedDispatcher
from pystrands.protocol import BrokerClientFactory, BrokerProtocol

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import broker_sim

KINDS = ("none", "fired", "pending", "failed", "raises", "coroutine-done", "coroutine-waits", "resubmit",
         "drain-inside", "paused")


class Schedule:
    """Random calls and completions on one dispatcher, with what the dispatcher promised checked at each step."""

    def __init__(self, seed: int, concurrency: int, max_events: int) -> None:
        self.rng = random.Random(seed)
        self.busy_calls: list[str] = []
        self.dispatcher = KeyedDispatcher(concurrency, max_events, 10**9,
                                          on_busy=lambda: self.busy_calls.append("busy"),
                                          on_idle=self._idle)
        self.concurrency = concurrency
        self.ids = 0
        self.submitted: dict[str, list[int]] = {}   # per key, call ids in submit order
        self.started: dict[str, list[int]] = {}
        self.running: set[int] = set()
        self.key_of: dict[int, str] = {}
        self.waiting: list[tuple[int, Deferred[None]]] = []  # calls whose outcome is not in yet
        self.drains: list[list[bool]] = []

    def _idle(self) -> None:
        """Reading resumes: lines held meanwhile are submitted at once, from inside the dispatcher."""
        self.busy_calls.append("idle")
        for _ in range(self.rng.randrange(3)):
            self.submit(self.rng.choice("abcdef"))

    def not_done(self) -> int:
        started = sum(len(ids) for ids in self.started.values())
        return sum(len(ids) for ids in self.submitted.values()) - started + len(self.running)

    def submit(self, key: str) -> None:
        self.ids += 1
        call = self.ids
        self.key_of[call] = key
        self.submitted.setdefault(key, []).append(call)
        self.dispatcher.submit(key, 10, self.handler, call, self.rng.choice(KINDS))

    def drained(self) -> None:
        fired = [False]
        self.drains.append(fired)

        def check(_: object) -> None:
            assert self.not_done() == 0, "a drain fired with calls not done"
            fired[0] = True
        self.dispatcher.drained().addCallback(check)

    def handler(self, call: int, kind: str) -> Any:
        key = self.key_of[call]
        started = self.started.setdefault(key, [])
        assert self.submitted[key][len(started)] == call, "out of order for its key"
        assert not any(self.key_of[other] == key for other in self.running), "two calls of one key at once"
        started.append(call)
        self.running.add(call)
        assert len(self.running) <= self.concurrency, "over the concurrency bound"
        if kind in ("none", "raises", "resubmit", "drain-inside", "fired", "failed", "coroutine-done"):
            if kind == "resubmit":
                self.submit(self.rng.choice("abcd"))
            if kind == "drain-inside":
                self.drained()
            self.running.discard(call)
            if kind == "raises":
                raise ValueError("handler failed")
            if kind == "fired":
                return succeed(None)
            if kind == "failed":
                return fail(ValueError("handler failed"))
            if kind == "coroutine-done":
                return self._done_at_once()
            return None
        outcome: Deferred[None] = Deferred()
        self.waiting.append((call, outcome))
        if kind == "coroutine-waits":
            return self._waits(call, outcome)
        outcome.addBoth(self._ended, call)  # before the dispatcher hears of it
        if kind == "paused":
            outer: Deferred[None] = succeed(None)
            outer.addCallback(lambda _: outcome)  # paused until ``outcome`` fires
            return outer
        return outcome

    def _ended(self, result: object, call: int) -> object:
        self.running.discard(call)
        return result

    async def _done_at_once(self) -> None:
        return None

    async def _waits(self, call: int, outcome: Deferred[None]) -> None:
        try:
            await outcome
        finally:
            self.running.discard(call)

    def complete_one(self) -> None:
        index = self.rng.randrange(len(self.waiting))
        _call, outcome = self.waiting.pop(index)
        if self.rng.random() < 0.2:
            outcome.errback(ValueError("later failure"))
        else:
            outcome.callback(None)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            choice = self.rng.random()
            if choice < 0.55:
                self.submit(self.rng.choice("abcdef"))
            elif choice < 0.6:
                self.drained()
            elif self.waiting:
                self.complete_one()
            self.check_busy_sequence()
        while self.waiting:
            self.complete_one()
        self.check_busy_sequence()

    def check_busy_sequence(self) -> None:
        assert all(a != b for a, b in zip(self.busy_calls, self.busy_calls[1:], strict=False)), self.busy_calls
        assert self.dispatcher.busy == (bool(self.busy_calls) and self.busy_calls[-1] == "busy")
        assert self.dispatcher.pending_events >= 0 and self.dispatcher.pending_bytes >= 0


@pytest.mark.parametrize("seed", range(300))
def test_random_schedules_keep_the_dispatchers_promises(seed: int) -> None:
    """Order per key, one call per key at a time, the bound, drains only when all is done and always in
    the end, busy and idle alternating and idle in the end, nothing left counted."""
    schedule = Schedule(seed, concurrency=1 + seed % 3, max_events=1 + seed % 5)
    schedule.run(200)
    dispatcher = schedule.dispatcher
    assert schedule.submitted == schedule.started
    assert not schedule.running
    assert all(fired for fired, in schedule.drains)
    assert (dispatcher.pending_events, dispatcher.pending_bytes, dispatcher.busy) == (0, 0, False)
    assert dispatcher.drained().called


@pytest.mark.parametrize("seed", range(200))
def test_the_reply_counter_counts_across_any_chunking(seed: int) -> None:
    """Replies (and a line that is not one) cut into random reads, some shorter than the action's name."""
    rng = random.Random(seed)
    lines = [b'{"action":"message_to_connection","params":{}}\n' if rng.random() < 0.9
             else b'{"action":"broadcast","params":{}}\n' for _ in range(rng.randrange(1, 30))]
    stream = b"".join(lines)
    counter = broker_sim.ReplyCounter()
    buffer = bytearray(b"message_to_connection" * 10)  # stale bytes beyond each read's size
    offset = 0
    while offset < len(stream):
        size = rng.choice((1, 2, 3, rng.randrange(1, 40), rng.randrange(1, 120)))
        chunk = stream[offset:offset + size]
        buffer[:len(chunk)] = chunk
        counter.feed(buffer, len(chunk))
        offset += len(chunk)
    assert counter.lines == len(lines)
    assert counter.actions == stream.count(broker_sim.REPLY_ACTION)


def test_a_context_that_is_not_bytes_is_not_called_a_json_encoding_failure() -> None:
    """new_message_frame's one ``try`` now covers the ``%`` formatting too, and orjson's JSONEncodeError is
    TypeError itself: a str context is reported as a frame JSON cannot carry, which it is not."""
    with pytest.raises(TypeError) as raised:
        wire.new_message_frame("hello", "{}")  # type: ignore[arg-type]
    assert "cannot be encoded as JSON" not in str(raised.value)


class _Stopping(Backend):
    """Sends its reply, then stops the connection from inside the handler; ``later`` keeps it waiting."""

    def __init__(self) -> None:
        self.factory: BrokerClientFactory | None = None
        self.later: Deferred[None] | None = None
        self.stopped: Deferred[None] | None = None

    def on_message(self, message: str, context: Any) -> object:
        sent = self.broker.send_private_message(context.client_id, message)
        assert self.factory is not None
        self.stopped = self.factory.stop(5.0)
        return self.later if self.later is not None else sent


@implementer(IStreamClientEndpoint)
class _InMemory:
    """An endpoint whose connection is made at once, over a StringTransport."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: BrokerProtocol | None = None

    def connect(self, factory: BrokerClientFactory) -> Deferred[BrokerProtocol]:
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


def _connected(backend: _Stopping) -> tuple[BrokerProtocol, StringTransport]:
    factory = backend.factory = BrokerClientFactory(backend, Clock())
    endpoint = _InMemory()
    factory.connect(endpoint)
    assert endpoint.protocol is not None
    return endpoint.protocol, endpoint.transport


@pytest.mark.parametrize("waits", [False, True])
def test_a_stop_from_inside_a_handler_closes_after_its_reply(waits: bool) -> None:
    """The handler's own call holds the drain: the connection closes after the handler is done, its
    reply written first; a handler still waiting holds the close until it is done."""
    backend = _Stopping()
    if waits:
        backend.later = Deferred()
    protocol, transport = _connected(backend)
    protocol.dataReceived(broker_sim.client_frames(5, 1)[0])
    assert b'"message_to_connection"' in transport.value()
    if waits:
        assert not transport.disconnecting
        assert backend.later is not None
        backend.later.callback(None)
    assert transport.disconnecting
