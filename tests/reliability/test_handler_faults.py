"""Handlers that raise, hang or are slow: other clients are still served, and a stop keeps its timeout.

Each face of ``faces.py`` runs with ``--concurrency 4`` (the blocking face
defaults to one handler at a time, where a hung handler holds every client
by design) behind the embedded broker, all as real processes.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.reliability import faces
from tests.reliability.support import (
    FACES, Child, Launch, OpenWs, chat, count, open_when_served, receive_text, start_broker, start_face, wait_until,
)

#: Beyond the stop timeout: closing the socket and the pool, interpreter exit.
EXIT_SLACK = 1.5


@pytest.mark.parametrize("kind", FACES)
def test_raising_hanging_and_slow_handlers_do_not_stop_other_clients(
        kind: str, launch: Launch, open_ws: OpenWs) -> None:
    """A hang, a raise and a slow handler in flight; every other client is answered meanwhile."""
    broker = start_broker(launch)
    face = start_face(launch, kind, broker.tcp_port, "--concurrency", "4")
    open_client = lambda room: open_when_served(open_ws, f"{broker.ws_url}/{room}")  # noqa: E731

    open_client("hang").send("hang")
    raiser = open_client("raise")
    raiser.send("raise")
    chat(raiser, "after-raise")  # the same client goes on after its handler raised
    assert count(face, "a handler that raises") >= 1, "the failure is logged"

    slow = open_client("slow")
    slow.send("slow")
    started = time.monotonic()
    chat(open_client("other"), "quick")
    assert time.monotonic() - started < faces.SLOW_SECONDS, "a fast client waited for a slow one"
    receive_text(slow, lambda message: message == "echo:slow")

    assert_stops_in_time(kind, face, "a handler hung")


def assert_stops_in_time(kind: str, face: Child, what: str) -> None:
    """SIGTERM ``face`` (a disconnect with the stop timeout) and check it exits within that timeout."""
    started = time.monotonic()
    face.process.send_signal(signal.SIGTERM)
    wait_until(lambda: face.process.poll() is not None, f"the backend to stop with {what}",
               timeout=faces.STOP_TIMEOUT + 15, child=face)
    took = time.monotonic() - started
    print(f"\n{kind}: stopped in {took:.2f}s with {what} (stop timeout {faces.STOP_TIMEOUT}s)")
    assert took <= faces.STOP_TIMEOUT + EXIT_SLACK, f"stopping took {took:.2f}s with {what}"


@pytest.mark.parametrize("kind", ["client", "app"])
def test_a_handler_hung_on_the_io_thread_still_lets_a_stop_keep_its_timeout(
        kind: str, launch: Launch, open_ws: OpenWs) -> None:
    """The blocking faces by default run handlers on the connection's I/O thread, as pystrands 1.0.0.

    A hung handler there holds the reactor, so the reactor cannot enforce
    the stop timeout: disconnect() shuts the socket down from its own thread.
    """
    broker = start_broker(launch)
    face = start_face(launch, kind, broker.tcp_port)
    chat(open_when_served(open_ws, f"{broker.ws_url}/before"), "before")
    open_when_served(open_ws, f"{broker.ws_url}/hang").send("hang")
    time.sleep(0.3)  # the handler is in: the I/O thread is held

    assert_stops_in_time(kind, face, "its I/O thread hung")
    assert count(face, "closed under them") == 1, "the forced close is logged, once"
