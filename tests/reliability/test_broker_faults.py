"""The broker dies, starts late, restarts, freezes: every backend face recovers, nothing is lost silently.

Real processes on 127.0.0.1: the embedded broker (``python -m pystrands
server``) and each face of ``faces.py``. Reconnect delays are small
(RECONNECT below), so "within its backoff" is a bound of about a second.
"""

from __future__ import annotations

import re
import signal

import pytest

from tests.reliability import faces
from tests.reliability.support import (
    FACES, AutoBackend, Broker, Child, Launch, OpenWs, Ticker, chat, count, free_port, freeze, kill,
    open_when_served, receive_text, restart_broker, start_broker, start_face, wait_until,
)

MAX_DELAY = 0.5
RECONNECT = ["--reconnect-delay", "0.1", "--max-reconnect-delay", str(MAX_DELAY)]
#: Longest wait for a reconnect: the capped delay, its jitter (ReconnectingClientFactory: up to ~12%), slack.
RECONNECT_BOUND = MAX_DELAY * 1.2 + 1.0
SEND_BUFFER = 50


@pytest.mark.parametrize("kind", FACES)
def test_broker_killed_and_restarted_sends_made_meanwhile_are_delivered_or_refused(
        kind: str, launch: Launch, open_ws: OpenWs) -> None:
    """SIGKILL the broker mid-chat; the burst sent while it is down: first SEND_BUFFER delivered, rest refused."""
    broker = start_broker(launch, name="broker-1")
    face = start_face(launch, kind, broker.tcp_port, *RECONNECT, "--send-buffer-size", str(SEND_BUFFER))
    chat(open_when_served(open_ws, f"{broker.ws_url}/lobby"), "before")
    kill(broker.child)

    face.process.send_signal(signal.SIGUSR1)
    refused = faces.BURST - SEND_BUFFER
    wait_until(lambda: count(face, "failed SendBufferFull") == refused, f"{refused} refused sends", child=face)
    assert [f"sent down-{i} failed" in face.output() for i in range(faces.BURST)] == (
        [False] * SEND_BUFFER + [True] * refused), "the refused sends must be the ones past the buffer"
    assert count(face, " ok") == 0, "nothing can be written while the broker is down"

    # Hold the backend back until a listener is in the room, or the flushed sends would reach nobody.
    freeze(face, True)
    try:
        broker = restart_broker(launch, broker, name="broker-2")
        helper = AutoBackend(broker.tcp_port)
        listener = open_when_served(open_ws, f"{broker.ws_url}/lobby")
    finally:
        freeze(face, False)
    received = [receive_text(listener, lambda m: m.startswith("down-")) for _ in range(SEND_BUFFER)]
    assert received == [f"down-{i}" for i in range(SEND_BUFFER)]
    wait_until(lambda: count(face, " ok") == SEND_BUFFER, f"{SEND_BUFFER} sends reported ok", child=face)
    assert count(face, "sent down-") == faces.BURST, "each send has exactly one outcome"

    helper.close()
    chat(open_when_served(open_ws, f"{broker.ws_url}/after"), "after")


def backends_connected(broker: Child) -> int:
    """How many backends the broker has logged as connected and not since gone (port probes come and go)."""
    return count(broker, "Backend connected") - count(broker, "Backend disconnected")


def start_all_faces(launch: Launch, tcp_port: int, *flags: str) -> list[Child]:
    """One process of each face, all connecting to ``tcp_port``."""
    return [start_face(launch, kind, tcp_port, *RECONNECT, *flags) for kind in FACES]


def test_broker_started_after_the_backends(launch: Launch, open_ws: OpenWs) -> None:
    """Backends that find no broker keep retrying and connect once it starts, within their capped backoff."""
    tcp_port, ws_port = free_port(), free_port()
    started = start_all_faces(launch, tcp_port)
    # Four failed attempts (0.1 s doubling) take the delay to its cap; the 4th in a row is logged as a warning.
    wait_until(lambda: all(count(face, "4 failures in a row") >= 1 for face in started),
               "every face to fail four attempts", timeout=20)
    broker = start_broker(launch, ws_port=ws_port, tcp_port=tcp_port)
    took = wait_until(lambda: backends_connected(broker.child) == len(FACES), "every face to connect",
                      timeout=RECONNECT_BOUND + 5, child=broker.child)
    assert took <= RECONNECT_BOUND
    chat(open_when_served(open_ws, f"{broker.ws_url}/lobby"), "late")


def test_broker_restarted_five_times_in_a_row(launch: Launch, open_ws: OpenWs) -> None:
    """Each of five restarts: every face reconnects within its backoff, and a client is served."""
    broker = start_broker(launch, name="broker-0")
    start_all_faces(launch, broker.tcp_port)
    wait_until(lambda: backends_connected(broker.child) == len(FACES), "every face to connect", child=broker.child)
    took = []
    for generation in range(1, 6):
        kill(broker.child)
        broker = restart_broker(launch, broker, name=f"broker-{generation}")
        took.append(wait_until(lambda: backends_connected(broker.child) == len(FACES), "every face to reconnect",
                               timeout=RECONNECT_BOUND + 5, child=broker.child))
        chat(open_when_served(open_ws, f"{broker.ws_url}/lobby"), f"restart-{generation}")
    print(f"\nall four faces back after each restart in: {', '.join(f'{seconds:.2f}s' for seconds in took)}")
    assert max(took) <= RECONNECT_BOUND


IDLE_TIMEOUT = 1.0
SILENCE_SEEN = "No data from the broker"


@pytest.mark.parametrize("kind", FACES)
def test_frozen_broker_is_detected_by_the_idle_timeout_then_thawed_or_replaced(
        kind: str, launch: Launch, open_ws: OpenWs) -> None:
    """SIGSTOP keeps TCP open but silent: the idle timeout drops it; SIGCONT or a new broker serves again."""
    broker = start_broker(launch, name="broker-1")
    face = start_face(launch, kind, broker.tcp_port, *RECONNECT, "--idle-timeout", str(IDLE_TIMEOUT))
    ticker = Ticker(open_ws, f"{broker.ws_url}/ticks")
    try:
        chat(open_when_served(open_ws, f"{broker.ws_url}/lobby"), "before")
        assert count(face, SILENCE_SEEN) == 0, "a broker with traffic is not idle"

        freeze(broker.child, True)
        try:
            took = wait_until(lambda: count(face, SILENCE_SEEN) >= 1, "the idle timeout", child=face)
        finally:
            freeze(broker.child, False)
        print(f"\n{kind}: a frozen broker detected in {took:.2f}s (idle timeout {IDLE_TIMEOUT}s)")
        assert took <= IDLE_TIMEOUT + 1.0
        chat(open_when_served(open_ws, f"{broker.ws_url}/lobby"), "thawed")

        freeze(broker.child, True)
        wait_until(lambda: count(face, SILENCE_SEEN) >= 2, "the idle timeout, again", child=face)
        kill(broker.child)
        broker = restart_broker(launch, broker, name="broker-2")
        chat(open_when_served(open_ws, f"{broker.ws_url}/lobby"), "replaced")
    finally:
        ticker.stop()


QUEUE_SIZE = 5
QUEUED = 8


def queue_events_without_backend(launch: Launch, open_ws: OpenWs) -> Broker:
    """A broker with --queue-size QUEUE_SIZE whose only backend was SIGKILLed after QUEUED messages came."""
    broker = start_broker(launch, "--queue-size", str(QUEUE_SIZE))
    face = start_face(launch, "twistd", broker.tcp_port)
    ws = open_when_served(open_ws, f"{broker.ws_url}/lobby")
    chat(ws, "hello")
    kill(face)
    wait_until(lambda: backends_connected(broker.child) == 0, "the broker to see the backend gone",
               child=broker.child)
    for index in range(QUEUED):
        ws.send(f"q-{index}")
    assert ws.ping().wait(5.0), "the broker read the messages before the pong"
    return broker


def test_events_queued_without_a_backend_are_flushed_in_order_to_the_next(launch: Launch, open_ws: OpenWs) -> None:
    """The newest QUEUE_SIZE events reach the next backend, oldest first; the older ones are dropped."""
    broker = queue_events_without_backend(launch, open_ws)
    backend = AutoBackend(broker.tcp_port)
    events = [backend.next_event() for _ in range(QUEUE_SIZE)]
    assert [(event["action"], event["params"]["message"]) for event in events] == [
        ("new_message", f"q-{index}") for index in range(QUEUED - QUEUE_SIZE, QUEUED)]
    assert backend.events.empty()


def test_events_dropped_from_the_queue_are_logged_with_their_count(launch: Launch, open_ws: OpenWs) -> None:
    """Drops past --queue-size are not silent: the broker's log says how many."""
    broker = queue_events_without_backend(launch, open_ws)
    AutoBackend(broker.tcp_port)
    dropped = QUEUED - QUEUE_SIZE
    wait_until(lambda: re.search(rf"dropped\D{{0,40}}\b{dropped}\b|\b{dropped}\b\D{{0,40}}dropped",
                                 broker.child.output(), re.IGNORECASE) is not None,
               "a log line with the number of dropped events", timeout=3, child=broker.child)
