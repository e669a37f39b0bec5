"""The broker's door rules, sans I/O: origins, slots, rate, fragments, and the bounded Outbox."""

from __future__ import annotations

import time

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from websockets.frames import Frame, Opcode

from pystrands.broker.guards import AddressSlots, MessageAssembler, OriginPolicy, TokenBucket, TooManyFragments
from pystrands.broker.outbox import Outbox


@pytest.mark.parametrize("origin, host, allowed", [
    (None, "chat.example.com", True),  # not a browser: no Origin at all
    ("http://localhost:8080", "localhost:8080", True),
    ("http://LOCALHOST:8080", "localhost:8080", True),
    ("https://chat.example.com", "chat.example.com", True),  # default ports on both sides
    ("https://chat.example.com:443", "chat.example.com", True),
    ("http://[::1]:8080", "[::1]:8080", True),
    ("http://127.0.0.1:8080", "localhost:8080", False),
    ("http://localhost:8081", "localhost:8080", False),
    ("http://evil.example", "localhost:8080", False),
    ("null", "localhost:8080", False),
    ("", "localhost:8080", False),
    ("not an origin", "localhost:8080", False),
    ("http://localhost:8080/path", "localhost:8080", False),
])
def test_by_default_only_the_pages_own_origin_may_connect(origin: str | None, host: str, allowed: bool) -> None:
    assert OriginPolicy().allows(origin, host) is allowed


@pytest.mark.parametrize("origin, allowed", [
    ("https://app.example.com", True),
    ("https://a.b.example.com", True),
    ("https://example.com", False),  # *. means a subdomain
    ("https://example.com.evil.net", False),
    ("http://app.example.com", False),  # another scheme
    ("https://app.example.com:8443", False),  # another port
    ("http://localhost:3000", True),
    ("http://localhost:3001", False),
    ("http://dev.test:9000", True),
    ("http://dev.test:1", True),
    ("null", False),
])
def test_listed_patterns(origin: str, allowed: bool) -> None:
    policy = OriginPolicy(["https://*.example.com", "http://localhost:3000", "http://dev.test:*"])
    assert policy.allows(origin, "ignored:1") is allowed


def test_star_allows_any_origin_but_null_must_be_listed() -> None:
    assert OriginPolicy(["*"]).allows("http://evil.example", "x")
    assert not OriginPolicy(["*"]).allows("null", "x")
    assert OriginPolicy(["null"]).allows("null", "x")
    assert not OriginPolicy(["null"]).allows("http://a.example", "x")


@pytest.mark.parametrize("pattern", ["evil", "https://", "https://a.example/path", "*.example.com",
                                     "https://exa*mple.com", "https://a.example:99999x", " "])
def test_malformed_patterns_are_refused_with_the_pattern_named(pattern: str) -> None:
    with pytest.raises(ValueError, match="is not an origin pattern"):
        OriginPolicy([pattern])


def test_a_pattern_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="allowed_origins must hold strings"):
        OriginPolicy([3])  # type: ignore[list-item]


def test_slots_count_in_all_and_per_address() -> None:
    slots = AddressSlots(total=3, per_address=2)
    assert slots.take("10.0.0.1") is None and slots.take("10.0.0.1") is None
    assert slots.take("10.0.0.1") == 429
    assert slots.take("10.0.0.2") is None
    assert slots.take("10.0.0.3") == 503
    slots.release("10.0.0.1")
    assert len(slots) == 2
    assert slots.take("10.0.0.1") is None
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        slots.release(address)
    assert len(slots) == 0 and slots.take("10.0.0.1") is None


def test_no_per_address_limit_when_zero() -> None:
    slots = AddressSlots(total=5)
    assert [slots.take("a") for _ in range(6)] == [None] * 5 + [503]


def test_token_bucket_allows_bursts_of_its_rate_then_spaces_messages() -> None:
    clock = Clock()
    bucket = TokenBucket(4, clock)
    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.take() == 0.0
    clock.advance(10)  # idle time refills up to the burst, no further
    assert [bucket.take() for _ in range(5)][-1] == pytest.approx(0.25)


def test_token_bucket_below_one_message_a_second() -> None:
    clock = Clock()
    bucket = TokenBucket(0.5, clock)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(2.0)


def frames(payloads: list[bytes], opcode: Opcode = Opcode.TEXT) -> list[Frame]:
    """One message split into a frame per payload."""
    return [Frame(opcode if index == 0 else Opcode.CONT, payload, fin=index == len(payloads) - 1)
            for index, payload in enumerate(payloads)]


def test_fragments_are_joined_into_one_message() -> None:
    assembler = MessageAssembler(max_fragments=10)
    results = [assembler.add(frame) for frame in frames([b"he", b"", "llö".encode()])]
    assert results == [None, None, "hellö"]
    assert assembler.add(Frame(Opcode.TEXT, b"next")) == "next"


def test_binary_messages_become_text_leniently() -> None:
    assembler = MessageAssembler(max_fragments=10)
    assert [assembler.add(frame) for frame in frames([b"a\xff", b"b"], Opcode.BINARY)] == [None, "a\ufffdb"]


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(UnicodeDecodeError):
        MessageAssembler(max_fragments=10).add(Frame(Opcode.TEXT, b"\xc3"))


def test_a_utf8_character_split_across_fragments_is_fine() -> None:
    encoded = "é".encode()
    assembler = MessageAssembler(max_fragments=10)
    assert [assembler.add(frame) for frame in frames([encoded[:1], encoded[1:]])] == [None, "é"]


def test_more_fragments_than_allowed_are_refused_and_forgotten() -> None:
    assembler = MessageAssembler(max_fragments=3)
    for frame in frames([b"a", b"b", b"c"] + [b"d"])[:3]:
        assembler.add(frame)
    with pytest.raises(TooManyFragments, match="more than 3 frames"):
        assembler.add(Frame(Opcode.CONT, b"d", fin=False))


def test_reassembly_is_linear_in_the_number_of_fragments() -> None:
    """1 MiB in 1-byte fragments: joined once, not copied at every fragment."""
    assembler = MessageAssembler(max_fragments=2 ** 21)
    pieces = frames([b"x"] * (1 << 20))
    start = time.process_time()
    message = None
    for frame in pieces:
        message = assembler.add(frame)
    assert time.process_time() - start < 2.0
    assert message == "x" * (1 << 20)


class Recorder:
    """What an Outbox tells its owner."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.congestion: list[bool] = []


def outbox(limit: int = 100, timeout: float = 5.0) -> tuple[Outbox, StringTransport, Clock, Recorder]:
    transport, clock, seen = StringTransport(), Clock(), Recorder()
    box = Outbox(transport, clock, limit=limit, timeout=timeout, on_fault=seen.faults.append,
                 on_congestion=seen.congestion.append)
    return box, transport, clock, seen


def test_writes_go_straight_through_while_the_socket_takes_them() -> None:
    box, transport, _, seen = outbox()
    assert transport.producer is box and transport.streaming
    box.write(b"one")
    box.write(b"two")
    assert transport.value() == b"onetwo" and not box.congested and seen.congestion == []


def test_writes_wait_while_the_socket_is_full_and_go_on_when_it_drains() -> None:
    box, transport, _, seen = outbox()
    box.pauseProducing()
    box.write(b"held-1")
    box.write(b"held-2")
    assert transport.value() == b"" and box.congested and box.held_bytes == 12
    box.resumeProducing()
    assert transport.value() == b"held-1held-2" and not box.congested
    assert seen.congestion == [True, False]


def test_a_drain_that_fills_the_socket_again_stays_congested() -> None:
    box, transport, _, seen = outbox()
    box.pauseProducing()
    box.write(b"a")
    box.write(b"b")
    transport.write = lambda data: box.pauseProducing() if data == b"a" else None  # type: ignore[method-assign]
    box.resumeProducing()
    assert box.congested and box.held_bytes == 1
    assert seen.congestion == [True], "no congestion end was reported: the socket filled again"


def test_too_many_held_bytes_is_a_fault() -> None:
    box, _, _, seen = outbox(limit=10)
    box.pauseProducing()
    box.write(b"x" * 10)
    assert seen.faults == []
    box.write(b"y")
    assert seen.faults == ["more than 10 bytes wait to be written"]
    assert box.held_bytes == 0


def test_no_progress_for_the_timeout_is_a_fault_and_any_drain_restarts_it() -> None:
    box, _, clock, seen = outbox(timeout=5.0)
    box.pauseProducing()
    clock.advance(4.9)
    box.resumeProducing()  # progress: the socket drained
    box.pauseProducing()
    clock.advance(4.9)
    assert seen.faults == []
    clock.advance(0.2)
    assert seen.faults == ["its socket made no progress for 5.0s"]
    assert not clock.getDelayedCalls()


def test_close_waits_for_what_is_held_and_lets_the_producer_go() -> None:
    box, transport, _, _ = outbox()
    box.pauseProducing()
    box.write(b"last words")
    box.close()
    assert not transport.disconnecting
    box.resumeProducing()
    assert transport.value() == b"last words" and transport.disconnecting
    assert transport.producer is None


def test_after_stop_nothing_is_written_and_no_timer_runs() -> None:
    box, transport, clock, seen = outbox()
    box.pauseProducing()
    box.stop()
    box.write(b"late")
    box.resumeProducing()
    clock.advance(60)
    assert transport.value() == b"" and seen.faults == [] and not clock.getDelayedCalls()

