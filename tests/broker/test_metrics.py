"""The broker's /metrics, /healthz and /readyz, scraped over HTTP from a real broker."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from websockets.exceptions import InvalidStatus

from pystrands.broker import BrokerConfig
from pystrands.broker.config import Options
from pystrands.broker.router import Broker
from tests.broker.conftest import TIMEOUT, RunningBroker, respond

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int) -> Samples:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    status, content_type, body = get(port, "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[("pystrands_broker_" + name, tuple(sorted(labels.items())))]


def raw_request(port: int, head: bytes) -> bytes:
    """Send a request head on a raw socket; the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        return sock.recv(65536).split(b"\r\n", 1)[0]


def test_counts_after_known_traffic(start_broker: Callable[..., RunningBroker]) -> None:
    broker = start_broker(metrics=True, queue_size=0)
    assert get(broker.ws_port, "/readyz")[0] == 503
    with pytest.raises(InvalidStatus) as refused:  # no backend: 503, and the error event is dropped
        broker.open("/ws/early").result(TIMEOUT)
    assert refused.value.response.status_code == 503

    backend = broker.backend()
    assert get(broker.ws_port, "/readyz")[:3:2] == (200, "ready\n")
    alice = broker.accept(backend, "/ws/a", "alice")
    bob = broker.accept(backend, "/ws/b", "bob")
    alice.send("one")
    alice.send("two")
    bob.send("three")
    assert [frame["action"] for frame in backend.recv_frames(3)] == ["new_message"] * 3
    backend.send_frame({"request_id": "r", "action": "message_to_room",
                        "params": {"room_id": "lobby", "message": "hi all"}})
    assert alice.recv(TIMEOUT) == "hi all" and bob.recv(TIMEOUT) == "hi all"

    future = broker.open("/ws/c")  # refused by the backend
    backend.send_frame(respond(backend.recv_frame(), "carol", "lobby", {}, accepted=False))
    with pytest.raises(InvalidStatus):
        future.result(TIMEOUT)
    assert raw_request(broker.ws_port, b"GET /ws/d HTTP/1.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")

    second = broker.backend()
    assert value(scrape(broker.ws_port), "backends") == 2
    second.close()
    broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the second backend to go")

    samples = scrape(broker.ws_port)
    assert value(samples, "clients") == 2
    assert value(samples, "clients_opened_total") == 2
    assert value(samples, "handshakes_total", outcome="accepted") == 2
    assert value(samples, "handshakes_total", outcome="rejected") == 1
    assert value(samples, "handshakes_total", outcome="unavailable") == 1
    assert value(samples, "handshakes_total", outcome="malformed") == 1
    assert value(samples, "handshakes_total", outcome="timeout") == 0
    assert value(samples, "messages_received_total", kind="text") == 3
    assert value(samples, "messages_sent_total", kind="room") == 2
    assert value(samples, "messages_sent_total", kind="connection") == 0
    assert value(samples, "received_bytes_total") >= len("onetwothree") + 3 * 6  # masked frame headers
    assert value(samples, "sent_bytes_total") >= 2 * len("hi all")
    assert value(samples, "backends") == 1
    assert value(samples, "queued_events") == 0
    assert value(samples, "dropped_total", reason="queue_overflow") == 1
    assert value(samples, "dropped_total", reason="client_write") == 0
    assert value(samples, "connection_request_seconds_count") == 3  # two accepted, one rejected
    assert 0 < value(samples, "connection_request_seconds_sum") < 3 * TIMEOUT
    in_flight = [key for key in samples if key[0] == "pystrands_broker_backend_in_flight_requests"]
    assert len(in_flight) == 1 and samples[in_flight[0]] == 0  # the gone backend's series went with it
    assert value(samples, "backend_load", backend=dict(in_flight[0][1])["backend"]) == 2

    alice.close()
    broker.thread.wait_for(lambda: len(broker.broker.rooms) == 1, "alice to leave")
    assert value(scrape(broker.ws_port), "clients") == 1


def test_in_flight_requests_and_timeouts(start_broker: Callable[..., RunningBroker]) -> None:
    broker = start_broker(metrics=True, auth_timeout=0.5)
    backend = broker.backend()
    future = broker.open("/ws/slow")
    backend.recv_frame()  # the connection_request, never answered
    samples = scrape(broker.ws_port)
    assert [v for (name, _), v in samples.items() if name.endswith("backend_in_flight_requests")] == [1]
    with pytest.raises(InvalidStatus):
        future.result(TIMEOUT)
    samples = scrape(broker.ws_port)
    assert value(samples, "handshakes_total", outcome="timeout") == 1
    assert value(samples, "connection_request_seconds_count") == 0


def sockets(broker: RunningBroker) -> set[Any]:
    """The open sockets of the broker's WebSocket port (call in the reactor thread)."""
    factory = broker.service.websockets
    assert factory is not None
    return factory.connections


def test_origin_and_over_limit_outcomes(start_broker: Callable[..., RunningBroker]) -> None:
    broker = start_broker(metrics_endpoint="tcp:0:interface=127.0.0.1", max_clients_per_address=1)
    address: Any = broker.service.metrics_address
    port = address.port
    broker.backend()
    with socket.create_connection(("127.0.0.1", broker.ws_port), timeout=TIMEOUT):  # takes the one slot
        broker.thread.wait_for(lambda: len(sockets(broker)) == 1, "the socket")
        assert raw_request(broker.ws_port, b"GET /ws/x HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 429")
    broker.thread.wait_for(lambda: not sockets(broker), "the sockets to close")
    head = (b"GET /ws/x HTTP/1.1\r\nHost: b.example\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert raw_request(broker.ws_port, head).startswith(b"HTTP/1.1 403")
    samples = scrape(port)
    assert value(samples, "handshakes_total", outcome="over_limit") == 1
    assert value(samples, "handshakes_total", outcome="origin") == 1


def test_separate_metrics_listener(start_broker: Callable[..., RunningBroker]) -> None:
    broker = start_broker(metrics_endpoint="tcp:0:interface=127.0.0.1")
    address: Any = broker.service.metrics_address
    assert address is not None and address.host == "127.0.0.1"
    port = address.port
    logged: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        assert value(scrape(port), "clients") == 0
        assert get(broker.ws_port, "/metrics")[0] == 404  # not on the WebSocket port then
        assert get(port, "/healthz")[:3:2] == (200, "ok\n")
        assert get(port, "/readyz")[0] == 503
        assert get(port, "/other")[0] == 404
        assert get(broker.ws_port, "/healthz")[:3:2] == (200, "ok\n")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not [line for line in logged if "GET /" in line]  # no access log: probes would fill the log


def test_without_metrics_only_health_and_readiness(broker: RunningBroker) -> None:
    assert broker.service.metrics_address is None
    assert get(broker.ws_port, "/metrics")[0] == 404
    status, content_type, body = get(broker.ws_port, "/healthz")
    assert (status, body) == (200, "ok\n") and content_type.startswith("text/plain")
    assert get(broker.ws_port, "/readyz")[:3:2] == (503, "no backend is connected\n")
    broker.backend()
    assert get(broker.ws_port, "/readyz")[:3:2] == (200, "ready\n")


def test_several_brokers_in_one_process_keep_their_own_registries() -> None:
    first, second = Broker(BrokerConfig(), Clock()), Broker(BrokerConfig(), Clock())
    first.metrics.messages_in += 5
    assert b"pystrands_broker_messages_received_total{kind=\"text\"} 5.0" in first.metrics.scrape()
    assert b"pystrands_broker_messages_received_total{kind=\"text\"} 0.0" in second.metrics.scrape()


@pytest.mark.parametrize("options, error, message", [
    ({"metrics": "yes"}, TypeError, "metrics must be a bool, not str"),
    ({"metrics_endpoint": ""}, TypeError, "metrics_endpoint must be a non-empty endpoint string"),
    ({"metrics_endpoint": "bogus:1"}, ValueError, "metrics_endpoint 'bogus:1' is not a usable server endpoint"),
])
def test_bad_config_values(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        BrokerConfig(**options)


def test_command_line_flags() -> None:
    options = Options(environ={})
    options.parseOptions(  # type: ignore[no-untyped-call]  # unannotated in Twisted
        ["--metrics", "--metrics-endpoint", "tcp:9100:interface=127.0.0.1"])
    config = options["config"]
    assert config.metrics is True and config.metrics_endpoint == "tcp:9100:interface=127.0.0.1"
    options = Options(environ={})
    options.parseOptions([])  # type: ignore[no-untyped-call]  # unannotated in Twisted
    assert options["config"].metrics is False and options["config"].metrics_endpoint is None


@pytest.mark.parametrize("args, message", [
    (["--metrics-endpoint", "tcp:notaport"], "--metrics-endpoint 'tcp:notaport' is not a usable server endpoint"),
    (["--metrics=yes"], "option --metrics must not have an argument"),
])
def test_bad_command_line_values_are_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pystrands", "server", *args], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the backend library's own metrics -----------------------------------------------


def library_samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples}


def test_library_metrics_count_events_through_a_real_backend(start_broker: Callable[..., RunningBroker]) -> None:
    from prometheus_client import CollectorRegistry

    from pystrands import BackendService
    from tests.broker.test_end_to_end import TwistedChat, play_chat

    broker = start_broker()
    registry = CollectorRegistry()
    chat = TwistedChat()
    service = BackendService(chat, f"tcp:host=127.0.0.1:port={broker.tcp_port}", reactor=broker.thread.reactor,
                             metrics_registry=registry, reconnect_delay=0.2)
    broker.thread.call(service.startService)
    try:
        broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the Twisted backend")
        play_chat(broker)
        samples = library_samples(registry)

        def events(kind: str) -> float:
            return samples[("pystrands_backend_events_total", (("kind", kind),))]

        assert events("connection_request") == 4  # alice, bob, carol, and mallory refused
        assert events("new_connection") == 3
        assert events("new_message") == 5
        assert events("disconnected") >= 1  # bob; the others may be on their way
        assert samples[("pystrands_backend_handler_seconds_count", (("kind", "new_message"),))] == 5
        assert samples[("pystrands_backend_reconnects_total", ())] == 0
        assert samples[("pystrands_backend_buffered_sends_total", ())] == 0

        factory: Any = chat.broker
        backends: Any = broker.service.backends
        broker.thread.call(lambda: [link.abort() for link in backends.connections])
        broker.thread.wait_for(lambda: factory.current is None, "the backend to notice")
        broker.thread.call(factory.send_room_message, "r1", "buffered")  # fires once flushed after the reconnect
        samples = library_samples(registry)
        assert samples[("pystrands_backend_reconnects_total", ())] == 1
        assert samples[("pystrands_backend_buffered_sends_total", ())] == 1
    finally:
        broker.thread.call(service.stopService)


def test_library_metrics_are_off_by_default_and_checked() -> None:
    from prometheus_client import CollectorRegistry

    from pystrands import Backend
    from pystrands.protocol import BrokerClientFactory
    from pystrands.settings import BackendSettings

    assert BrokerClientFactory(Backend(), Clock()).metrics is None
    assert BackendSettings(metrics_registry=CollectorRegistry()).metrics_registry is not None
    with pytest.raises(TypeError, match=r"metrics_registry must be a prometheus_client\.CollectorRegistry"
                                        r" or None, not str"):
        BackendSettings(metrics_registry="yes")
    registry = CollectorRegistry()  # two connections may share a registry
    first = BrokerClientFactory(Backend(), Clock(), metrics_registry=registry)
    second = BrokerClientFactory(Backend(), Clock(), metrics_registry=registry)
    assert first.metrics is second.metrics is not None


def test_library_metrics_of_a_shared_registry_are_made_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocking clients on their own reactor threads may share a registry: no duplicated timeseries."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry

    from pystrands import metrics

    class Slow(metrics.BackendMetrics):
        def __init__(self, registry: Any) -> None:
            time.sleep(0.05)  # widens the window between the look-up and the registration
            super().__init__(registry)

    monkeypatch.setattr(metrics, "BackendMetrics", Slow)
    registry = CollectorRegistry()
    start = threading.Barrier(4)

    def make() -> Any:
        start.wait(TIMEOUT)
        return metrics.backend_metrics(registry)

    with ThreadPoolExecutor(4) as pool:
        made = [future.result(TIMEOUT) for future in [pool.submit(make) for _ in range(4)]]
    assert all(each is made[0] for each in made)


def test_library_metrics_build_nothing_per_frame() -> None:
    """The counting submit is made once per kind, its timed handler once per handler; other frames pass."""
    from prometheus_client import CollectorRegistry

    from pystrands.metrics import backend_metrics

    class Dispatcher:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def submit(self, key: Any, size: int, handler: Callable[..., Any], *args: Any) -> None:
            self.calls.append((key, size, handler, handler(*args)))

    class Handlers:
        def on_message(self, message: str) -> str:
            return message.upper()

    registry = CollectorRegistry()
    counting = backend_metrics(registry)
    assert counting is not None
    dispatcher, handlers = Dispatcher(), Handlers()
    for kind in ("heartbeat", "reply", "hello"):
        assert counting.counting(dispatcher.submit, kind) == dispatcher.submit
    first = counting.counting(dispatcher.submit, "new_message")
    assert counting.counting(dispatcher.submit, "new_message") is first
    first("a", 1, handlers.on_message, "hi")
    first("b", 2, handlers.on_message, "ho")
    (_, _, one, said), (_, _, two, again) = dispatcher.calls
    assert (said, again) == ("HI", "HO") and one is two and one.__qualname__.endswith("Handlers.on_message")
    other = Dispatcher()
    assert counting.counting(other.submit, "new_message") is not first  # its own dispatcher
    samples = library_samples(registry)
    assert samples[("pystrands_backend_events_total", (("kind", "new_message"),))] == 2
    assert samples[("pystrands_backend_handler_seconds_count", (("kind", "new_message"),))] == 2
