"""Sticky routing, handshake outcomes (403/503/409, auth timeout), the query param, the queue."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from .conftest import TIMEOUT, RunningBroker, respond


def refused_status(broker: RunningBroker, path: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        broker.open(path).result(TIMEOUT)
    return refused.value.response.status_code


def test_each_client_sticks_to_one_backend_and_new_clients_spread(broker: RunningBroker) -> None:
    first, second = broker.backend(), broker.backend()
    owners = [first, second, first, second]
    clients = [broker.accept(owner, f"/ws/lobby/c{index}", f"c{index}")
               for index, owner in enumerate(owners)]
    for round_ in range(5):
        for index, client in enumerate(clients):
            client.send(f"c{index}-{round_}")
    received: dict[int, list[tuple[str, str]]] = {id(first): [], id(second): []}
    for backend in (first, second):
        for frame in backend.recv_frames(10):
            received[id(backend)].append((frame["params"]["context"]["client_id"],
                                          frame["params"]["message"]))
        backend.assert_silent(0.1)
    for index, owner in enumerate(owners):
        mine = [message for client_id, message in received[id(owner)] if client_id == f"c{index}"]
        assert mine == [f"c{index}-{round_}" for round_ in range(5)]


def test_clients_of_a_lost_backend_move_to_another(broker: RunningBroker) -> None:
    first, second = broker.backend(), broker.backend()
    client = broker.accept(first, "/ws/lobby/a", "a")
    first.close()
    broker.thread.wait_for(lambda: len(broker.broker.backends) == 1, "the first backend to go")
    client.send("after")
    frame = second.recv_frame()
    assert frame["action"] == "new_message" and frame["params"]["message"] == "after"


def test_unanswered_request_is_refused_with_403_after_auth_timeout(
        start_broker: Any, broker_warnings: list[str]) -> None:
    broker = start_broker(auth_timeout=0.3)
    backend = broker.backend()
    opening = broker.open("/ws/lobby/slow")
    request = backend.recv_frame()
    with pytest.raises(InvalidStatus) as refused:
        opening.result(TIMEOUT)
    assert refused.value.response.status_code == 403
    assert any("within 0.3s" in line for line in broker_warnings)
    backend.send_frame(respond(request, "late", "lobby", {}))  # a late answer: skipped
    broker.thread.wait_for(lambda: any("unknown or expired" in line for line in broker_warnings),
                           "the late answer to be logged")
    assert broker.thread.call(lambda: (len(broker.broker.rooms), broker.broker.handshaking)) == (0, 0)


def test_no_backend_is_503_and_queues_the_error_event(broker: RunningBroker) -> None:
    assert refused_status(broker, "/ws/lobby/erin") == 503
    assert broker.thread.call(lambda: len(broker.broker.queue)) == 1


def test_backend_lost_while_judging_is_503(broker: RunningBroker) -> None:
    backend = broker.backend()
    opening = broker.open("/ws/lobby/x")
    backend.recv_frame()
    backend.close()
    with pytest.raises(InvalidStatus) as refused:
        opening.result(TIMEOUT)
    assert refused.value.response.status_code == 503


def test_duplicate_client_id_is_409(broker: RunningBroker) -> None:
    backend = broker.backend()
    broker.accept(backend, "/ws/lobby/a", "same")
    opening = broker.open("/ws/lobby/b")
    backend.send_frame(respond(backend.recv_frame(), "same", "lobby", {}))
    with pytest.raises(InvalidStatus) as refused:
        opening.result(TIMEOUT)
    assert refused.value.response.status_code == 409


def test_query_string_reaches_the_backend_as_lists(broker: RunningBroker) -> None:
    backend = broker.backend()
    broker.open("/ws/lobby/q?token=a%20b&tag=1&tag=2&empty=")
    request = backend.recv_frame()
    assert request["params"]["url"] == "/ws/lobby/q"
    assert request["params"]["query"] == {"token": ["a b"], "tag": ["1", "2"], "empty": [""]}


def test_a_plain_get_under_ws_is_426_without_asking_a_backend(broker: RunningBroker) -> None:
    backend = broker.backend()
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://127.0.0.1:{broker.ws_port}/ws/lobby", timeout=TIMEOUT)
    assert answer.value.code == 426 and answer.value.headers["Upgrade"] == "websocket"
    backend.assert_silent(0.1)


@pytest.mark.parametrize("size, kept", [(2, ["b", "c"]), (0, [])])
def test_queue_keeps_the_newest_events_up_to_its_size(start_broker: Any, size: int,
                                                      kept: list[str]) -> None:
    broker = start_broker(queue_size=size)
    backend = broker.backend()
    client = broker.accept(backend, "/ws/lobby/a", "a")
    backend.close()
    broker.thread.wait_for(lambda: not broker.broker.backends, "the backend to go")
    for message in ("a", "b", "c"):
        client.send(message)
    broker.thread.wait_for(lambda: broker.broker.queue.dropped + len(broker.broker.queue) == 3,
                           "three events queued or dropped")
    newcomer = broker.backend()
    flushed = [frame["params"]["message"] for frame in newcomer.recv_frames(len(kept))]
    assert flushed == kept
    newcomer.assert_silent(0.1)

