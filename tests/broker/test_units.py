"""Sans-I/O pieces of the broker: the line splitter, the queue."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pystrands.lines import LineSplitter
from pystrands.broker.config import BrokerConfig
from pystrands.broker.queue import EventQueue


def split_all(chunks: list[bytes], max_length: int = 1 << 30) -> tuple[list[bytes], list[bytes]]:
    overflows: list[bytes] = []
    splitter = LineSplitter(max_length, overflows.append)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines, overflows


@given(st.lists(st.text(alphabet="ab\r\n", max_size=40).map(str.encode), max_size=12))
def test_any_chunking_gives_the_lines_of_the_whole_stream(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    complete = stream[:stream.rfind(b"\n") + 1]
    expected = [line.removesuffix(b"\r") for line in complete.split(b"\n")[:-1]]
    assert split_all(chunks)[0] == [line for line in expected if line]


def test_long_lines_are_reported_and_skipped_to_their_newline() -> None:
    lines, overflows = split_all([b"ok\n" + b"x" * 30, b"x" * 30, b"x" * 30 + b"\nnext\n", b"y" * 99 + b"\n"],
                                 max_length=50)
    assert lines == [b"ok", b"next"]
    assert overflows == [b"x" * 30, b"y" * 99]


def test_splitting_is_linear_in_the_line_size() -> None:
    chunk = b"z" * 4096
    start = time.perf_counter()
    lines, _ = split_all([chunk] * 4096 + [b"\n"])  # one 16 MiB line in 4 KiB reads
    assert time.perf_counter() - start < 1.0
    assert len(lines[0]) == 16 * 1024 * 1024


def test_queue_drops_the_oldest_and_drains_in_order() -> None:
    queue: EventQueue[int] = EventQueue(3)
    for event in range(5):
        queue.put(event)
    assert (len(queue), queue.dropped) == (3, 2)
    assert list(queue.drain()) == [2, 3, 4]
    assert len(queue) == 0


@pytest.mark.parametrize("options, error, message", [
    ({"max_fragments": 0}, ValueError, "max_fragments must be >= 1"),
    ({"max_clients_per_address": -1}, ValueError, "max_clients_per_address must be >= 0"),
    ({"max_message_size": 16 * 1024 * 1024}, ValueError, "backend library skips lines over 16777216"),
    ({"handshake_timeout": 0}, ValueError, "handshake_timeout must be a finite number > 0"),
    ({"client_write_timeout": float("nan")}, ValueError, "client_write_timeout must be a finite number"),
    ({"ping_interval": -1}, ValueError, "ping_interval must be a finite number >= 0"),
    ({"client_idle_timeout": "60"}, TypeError, "client_idle_timeout must be a number"),
    ({"max_client_rate": True}, TypeError, "max_client_rate must be a number"),
    ({"allowed_origins": "https://a.example"}, TypeError, "allowed_origins must be a sequence"),
    ({"allowed_origins": 5}, TypeError, "allowed_origins must be a sequence"),
    ({"allowed_origins": ["https://a.example", "nope"]}, ValueError, "'nope' is not an origin pattern"),
    ({"allowed_origins": [None]}, TypeError, "allowed_origins must hold strings"),
    ({"ws_endpoint": 8080}, TypeError, "ws_endpoint must be a non-empty endpoint string"),
    ({"ws_endpoint": ""}, TypeError, "ws_endpoint must be a non-empty endpoint string"),
    ({"tcp_endpoint": "carrier-pigeon:1"}, ValueError, "tcp_endpoint 'carrier-pigeon:1' is not a usable"),
])
def test_broker_config_refuses_bad_values_naming_the_field(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        BrokerConfig(**options)


def test_broker_config_endpoints_replace_ports_and_origins_become_a_tuple() -> None:
    config = BrokerConfig(ws_endpoint="tcp:9000:interface=127.0.0.1", tcp_endpoint="unix:/tmp/ps.sock",
                          allowed_origins=["https://*.example.com"])
    assert (config.ws_listen, config.tcp_listen) == ("tcp:9000:interface=127.0.0.1", "unix:/tmp/ps.sock")
    assert config.allowed_origins == ("https://*.example.com",)
    assert BrokerConfig(ws_port=1234, tcp_port=0).ws_listen == "tcp:1234"


@pytest.mark.parametrize("limits, max_clients, raised_to, warns", [
    ((1024, 1_048_576), 10_000, 10_256, False),
    ((1024, 4096), 10_000, 4096, True),  # the hard limit caps it: say so
    ((65536, 1_048_576), 10_000, None, False),  # already enough: untouched
])
def test_the_open_file_limit_is_raised_toward_max_clients(
        monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], max_clients: int,
        raised_to: int | None, warns: bool) -> None:
    import resource

    from twisted.logger import globalLogPublisher

    from pystrands.broker.service import fit_file_limit

    calls: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: calls.append((which, value)))
    warnings: list[dict] = []
    globalLogPublisher.addObserver(warnings.append)
    try:
        fit_file_limit(BrokerConfig(max_clients=max_clients))
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    assert calls == ([] if raised_to is None else [(resource.RLIMIT_NOFILE, (raised_to, limits[1]))])
    assert any("open-file limit" in event.get("log_format", "") for event in warnings) is warns
