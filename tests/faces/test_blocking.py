"""PyStrandsClient against the fake broker: callbacks, sends, threads, life cycle, reconnects."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
from typing import Any, Iterator

import pytest

from pystrands import Context, PyStrandsClient
from tests.faces.conftest import accept_client, answer_like_the_reference, backend_frames, event, nested_context, recorded
from tests.faces.sample_backends import ThreeAtOnce
from tests.support.fakebroker import FakeBroker

WAIT = 5.0


class Recorder(PyStrandsClient):
    """Records every callback (with its thread) and answers like the reference backend did."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def next_event(self) -> tuple[Any, ...]:
        return self.events.get(timeout=WAIT)

    def on_connection_request(self, request: Any) -> Any:
        self.events.put(("request", request, threading.current_thread()))
        return answer_like_the_reference(request)

    def on_new_connection(self, context: Context) -> None:
        self.events.put(("new", context, threading.current_thread()))

    def on_message(self, message: str, context: Context) -> None:
        self.events.put(("message", message, context, threading.current_thread()))
        self.send_room_message(context.room_id, f"room:{message}")
        self.send_private_message(context.client_id, f"private:{message}")
        self.broadcast_message(f"all:{message}")

    def on_disconnect(self, context: Context) -> None:
        self.events.put(("gone", context, threading.current_thread()))

    def on_error(self, error: str, context: Context) -> None:
        self.events.put(("error", error, context, threading.current_thread()))


@pytest.fixture
def clients() -> Iterator[list[PyStrandsClient]]:
    """Clients made by a test; each is disconnected afterwards."""
    made: list[PyStrandsClient] = []
    yield made
    for client in made:
        client.disconnect(timeout=1.0)


def started(clients: list[PyStrandsClient], client: PyStrandsClient) -> PyStrandsClient:
    clients.append(client)
    return client


def wait_for(condition: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def params(frames: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(frame["action"], frame["params"]) for frame in frames]


def test_the_transcript_through_every_callback(broker: FakeBroker, clients: list) -> None:
    client = started(clients, Recorder(host="localhost", port=broker.port))
    assert client.connect() is True and client.connected is True
    conn = broker.accept()

    conn.send_frame(recorded("connection_request"))
    reply = conn.recv_frame()
    assert reply == backend_frames("1.")[0] | {"params": {
        "accepted": True, "client_id": "client-alice", "room_id": "lobby", "metadata": {"user": "alice"}}}
    kind, request, io_thread = client.next_event()
    assert request.headers["X-Token"] == ["ok"] and request.remote_addr == "127.0.0.1:46092"
    # By default handlers run on the client's own I/O thread, as pystrands 1.0.0's receive thread.
    assert io_thread is not threading.main_thread() and io_thread.name == "pystrands-reactor"

    conn.send_frame(recorded("new_connection"))
    kind, context, _ = client.next_event()
    assert (kind, context.client_id, context.room_id, context.metadata) == (
        "new", "client-alice", "lobby", {"user": "alice"})

    for index, scenario in ((0, "2."), (1, "3.")):
        conn.send_frame(recorded("new_message", index))
        kind, message, context, thread = client.next_event()
        assert context.metadata == {"user": "alice"}
        assert thread is io_thread
        assert params(conn.recv_frames(3)) == params(backend_frames(scenario))

    conn.send_frame(recorded("disconnected"))
    kind, context, _ = client.next_event()
    assert (kind, context.client_id, context.metadata) == ("gone", "client-alice", {"user": "alice"})

    conn.send_frame(recorded("error"))
    kind, error, context, _ = client.next_event()
    assert error == "no backend available to handle connection request"
    assert context.client_id is None and context.metadata["url"].startswith("/ws/")


def test_a_rejected_connection_and_request_accepted(broker: FakeBroker, clients: list) -> None:
    class ByAttribute(PyStrandsClient):
        def on_connection_request(self, request: Any) -> None:
            request.accepted = request.url != "/ws/lobby/bob"

    client = started(clients, ByAttribute(port=broker.port))
    assert client.connect()
    conn = broker.accept()
    assert accept_client(conn, "r1", "/ws/lobby/bob")["accepted"] is False
    assert accept_client(conn, "r2", "/ws/lobby/carol")["accepted"] is True
    recorder = started(clients, Recorder(port=broker.port))
    assert recorder.connect()
    conn2 = broker.accept()
    scenario4 = backend_frames("4.")[0]
    conn2.send_frame(recorded("connection_request", 1))
    assert conn2.recv_frame()["params"]["accepted"] is scenario4["params"]["accepted"] is False


def test_defaults_accept_and_ignore_events(broker: FakeBroker, clients: list) -> None:
    client = started(clients, PyStrandsClient(port=broker.port))
    assert client.connect()
    conn = broker.accept()
    reply = accept_client(conn, url="/ws/room9")
    assert reply["accepted"] is True and reply["room_id"] == "/ws/room9" and reply["metadata"] == {}
    for action in ("new_connection", "new_message", "disconnected", "error"):
        conn.send_frame(recorded(action))
    conn.assert_silent(0.3)
    assert client.connected


def test_handlers_run_one_at_a_time_by_default(broker: FakeBroker, clients: list) -> None:
    spans: list[tuple[float, float]] = []
    done = threading.Semaphore(0)

    class Slow(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            start = time.monotonic()
            time.sleep(0.1)
            spans.append((start, time.monotonic()))
            done.release()

    client = started(clients, Slow(port=broker.port))
    assert client.connect()
    conn = broker.accept()
    for n in range(3):
        conn.send_frame(event("new_message", nested_context(f"c{n}", "lobby", {}), message="x"))
    for _ in range(3):
        assert done.acquire(timeout=WAIT)
    spans.sort()
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))


def test_concurrency_runs_clients_at_once_and_keeps_each_clients_order(broker: FakeBroker,
                                                                       clients: list) -> None:
    seen: list[tuple[str, str]] = []
    running = threading.Semaphore(0)
    release = threading.Event()

    class Parallel(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            running.release()
            release.wait(WAIT)
            seen.append((context.client_id, message))

    client = started(clients, Parallel(port=broker.port, concurrency=3))
    assert client.connect()
    conn = broker.accept()
    for n in range(4):
        for client_id in ("a", "b", "c"):
            conn.send_frame(event("new_message", nested_context(client_id, "r", {}), message=str(n)))
    for _ in range(3):  # three clients' first handlers run at the same time
        assert running.acquire(timeout=WAIT)
    release.set()
    wait_for(lambda: len(seen) == 12)
    for client_id in ("a", "b", "c"):
        assert [m for c, m in seen if c == client_id] == ["0", "1", "2", "3"]


def held_in_a_handler(clients: list, broker: FakeBroker, **settings: Any) -> tuple[Any, Any, threading.Event]:
    """A connected client whose handler of the message "first" runs until the returned event is set."""
    entered = threading.Event()
    release = threading.Event()

    class Stuck(PyStrandsClient):
        #: The Futures of the sends made once released.
        late: queue.Queue[concurrent.futures.Future[bool]] = queue.Queue()

        def on_message(self, message: str, context: Context) -> None:
            entered.set()
            release.wait(WAIT)
            self.late.put(self.send_room_message(context.room_id, f"done:{message}"))

    client = started(clients, Stuck(port=broker.port, **settings))
    assert client.connect()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="first"))
    assert entered.wait(WAIT)
    return client, conn, release


def test_with_worker_threads_a_slow_handler_does_not_hold_up_io(broker: FakeBroker, clients: list) -> None:
    client, conn, release = held_in_a_handler(clients, broker, concurrency=2)
    conn.send_frame({"request_id": "heartbeat", "action": "heartbeat", "params": {}})
    assert client.broadcast_message("while stuck").result(WAIT) is True
    assert conn.recv_frame()["params"] == {"message": "while stuck"}
    release.set()


def test_concurrency_n_runs_n_clients_handlers_at_once_in_n_threads(broker: FakeBroker, clients: list) -> None:
    client = started(clients, ThreeAtOnce(port=broker.port, concurrency=3))
    assert client.connect()
    conn = broker.accept()
    for sender in "abc":
        conn.send_frame(event("new_message", nested_context(sender, "r", {}), message="hi"))
    replies = sorted((f["params"]["conn_id"], f["params"]["message"]) for f in conn.recv_frames(3, WAIT))
    assert replies == [(sender, "hi:together") for sender in "abc"], "three handlers met at the barrier"


def test_by_default_a_blocking_handler_holds_its_clients_io_until_it_returns(broker: FakeBroker,
                                                                             clients: list) -> None:
    """As in pystrands 1.0.0: one handler at a time on the I/O thread; nothing is lost meanwhile."""
    client, conn, release = held_in_a_handler(clients, broker)
    conn.send_frame(event("new_message", nested_context("b", "r", {}), message="second"))
    from_outside = client.broadcast_message("from another thread")
    conn.assert_silent(0.3)
    assert not from_outside.done()
    release.set()
    # In the order they were sent: the other thread's first, though it waited for the I/O thread.
    assert [frame["params"]["message"] for frame in conn.recv_frames(3)] == [
        "from another thread", "done:first", "done:second"]
    assert from_outside.result(WAIT) is True


def test_a_handler_longer_than_the_idle_timeout_does_not_drop_a_live_broker(broker: FakeBroker,
                                                                           clients: list) -> None:
    """Heartbeats that arrived while a handler held the I/O thread count once it is free."""
    ran = threading.Semaphore(0)

    class Sleeper(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            if message == "sleep":
                time.sleep(1.2)
            ran.release()

    client = started(clients, Sleeper(port=broker.port, idle_timeout=0.5))
    assert client.connect()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="sleep"))
    for _ in range(12):
        conn.send_frame({"request_id": "heartbeat", "action": "heartbeat", "params": {}})
        time.sleep(0.1)
    assert ran.acquire(timeout=WAIT)
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="after"))
    assert ran.acquire(timeout=WAIT)
    assert client.connected
    with pytest.raises(AssertionError, match="no backend connected"):
        broker.accept(timeout=0.5)  # no reconnect: the first connection was kept


def test_sends_from_foreign_threads_all_arrive(broker: FakeBroker, clients: list) -> None:
    client = started(clients, PyStrandsClient(port=broker.port))
    assert client.connect()
    conn = broker.accept()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda n: client.send_room_message("r", f"m{n}"), range(200)))
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert [f.result(WAIT) for f in futures] == [True] * 200
    received = sorted(frame["params"]["message"] for frame in conn.recv_frames(200))
    assert received == sorted(f"m{n}" for n in range(200))


@pytest.mark.parametrize(
    ("method", "args", "name"),
    [
        ("send_room_message", (1, "m"), "room_id"),
        ("send_room_message", ("r", None), "message"),
        ("send_private_message", (b"id", "m"), "client_id"),
        ("send_private_message", ("id", {"a": 1}), "message"),
        ("broadcast_message", (3.5,), "message"),
    ],
)
def test_bad_send_arguments_raise_in_the_caller_before_writing(broker: FakeBroker, clients: list,
                                                               method: str, args: tuple, name: str) -> None:
    client = started(clients, PyStrandsClient(port=broker.port))
    assert client.connect()
    conn = broker.accept()
    with pytest.raises(TypeError, match=name):
        getattr(client, method)(*args)
    conn.assert_silent(0.2)


def test_sends_when_not_connected_resolve_false_with_a_warning(broker: FakeBroker,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    client = PyStrandsClient(port=broker.port)
    assert client.broadcast_message("too early").result(WAIT) is False
    assert client.connect()
    conn = broker.accept()
    client.disconnect()
    assert client.send_room_message("r", "too late").result(WAIT) is False
    assert client.send_private_message("c", "too late").result(WAIT) is False
    conn.assert_silent(0.2)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and "connect() or run_forever() first" in dropped[0], "the first drop is logged at once"


def test_run_forever_returns_after_a_failed_single_attempt(free_port: int) -> None:
    client = PyStrandsClient(port=free_port, auto_reconnect=False)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    runner.join(WAIT)
    assert not runner.is_alive(), "auto_reconnect=False and the attempt failed: nothing to wait for"
    assert not client.connected


def test_run_forever_returns_when_the_connection_is_lost_without_auto_reconnect(broker: FakeBroker) -> None:
    client = Recorder(port=broker.port, auto_reconnect=False)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    conn = broker.accept()
    assert accept_client(conn)["accepted"] is True  # connected, and the broker's first frame answered
    conn.close()
    runner.join(WAIT)
    assert not runner.is_alive(), "lost, and no retry to follow: nothing to wait for"
    assert not client.connected


def test_connect_returns_false_quickly_without_a_broker(free_port: int) -> None:
    client = PyStrandsClient(host="localhost", port=free_port, auto_reconnect=False)
    started_at = time.monotonic()
    assert client.connect() is False
    assert time.monotonic() - started_at < 3.0
    assert client.connected is False
    client.disconnect(timeout=0.5)


def test_disconnect_waits_for_in_flight_handlers(broker: FakeBroker) -> None:
    entered = threading.Event()

    class Finisher(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            entered.set()
            time.sleep(0.3)
            self.send_room_message(context.room_id, "finished")

    client = Finisher(port=broker.port)
    assert client.connect()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="x"))
    assert entered.wait(WAIT)
    client.disconnect(timeout=5.0)
    assert conn.recv_frame()["params"] == {"room_id": "r", "message": "finished"}
    conn.wait_closed()
    assert client.connected is False


def test_disconnect_gives_up_on_a_stuck_handler_after_timeout(broker: FakeBroker) -> None:
    entered = threading.Event()
    release = threading.Event()

    class Stuck(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            entered.set()
            release.wait(30)

    client = Stuck(port=broker.port)
    assert client.connect()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="x"))
    assert entered.wait(WAIT)
    started_at = time.monotonic()
    client.disconnect(timeout=0.2)
    assert time.monotonic() - started_at < 3.0
    conn.wait_closed()
    release.set()


def test_disconnect_leaves_a_worker_thread_past_its_timeout_to_finish_alone_its_sends_dropped(
        broker: FakeBroker, caplog: pytest.LogCaptureFixture) -> None:
    """A thread cannot be cancelled: disconnect() returns at its deadline, says so, and the late send is False.

    False even once connected again: the late send is the old connection's, never the new one's.
    """
    entered, release = threading.Event(), threading.Event()
    late: queue.Queue[Any] = queue.Queue()

    class Stuck(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            entered.set()
            release.wait(30)
            late.put(self.broadcast_message("after the disconnect"))

    client = Stuck(port=broker.port, concurrency=2)
    assert client.connect()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="x"))
    assert entered.wait(WAIT)
    started_at = time.monotonic()
    client.disconnect(timeout=0.2)
    assert time.monotonic() - started_at < 3.0
    conn.wait_closed()
    assert any("left to finish alone" in r.getMessage() for r in caplog.records)
    assert client.connect()
    new_conn = broker.accept()
    release.set()
    assert late.get(timeout=WAIT).result(WAIT) is False
    new_conn.assert_silent(0.3)
    client.disconnect()


def test_disconnect_from_a_handler_ends_run_forever(broker: FakeBroker) -> None:
    class Quitter(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            if message == "quit":
                self.disconnect()

    client = Quitter(port=broker.port)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="quit"))
    runner.join(WAIT)
    assert not runner.is_alive()
    conn.wait_closed()


def test_run_forever_ends_on_disconnect_from_another_thread(broker: FakeBroker) -> None:
    client = Recorder(port=broker.port)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    conn = broker.accept()
    assert accept_client(conn)["accepted"] is True
    client.disconnect()
    runner.join(WAIT)
    assert not runner.is_alive()
    conn.wait_closed()


def test_run_forever_waits_for_a_broker_that_starts_later(free_port: int) -> None:
    client = Recorder(host="localhost", port=free_port, reconnect_delay=0.05, max_reconnect_delay=0.2)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    try:
        time.sleep(0.5)
        assert runner.is_alive() and not client.connected
        with FakeBroker(port=free_port) as late:
            conn = late.accept(timeout=WAIT)
            assert accept_client(conn)["client_id"] == "client-alice"
    finally:
        client.disconnect(timeout=1.0)
        runner.join(WAIT)
    assert not runner.is_alive()


def test_run_forever_survives_a_broker_restart(free_port: int) -> None:
    client = Recorder(port=free_port, reconnect_delay=0.05, max_reconnect_delay=0.2)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    with FakeBroker(port=free_port) as first:
        runner.start()
        conn = first.accept()
        assert accept_client(conn)["accepted"] is True
        assert client.next_event()[0] == "request"
    wait_for(lambda: not client.connected)
    pending = client.send_room_message("lobby", "sent while the broker is down")
    try:
        with FakeBroker(port=free_port) as second:
            conn = second.accept(timeout=WAIT)
            assert conn.recv_frame()["params"]["message"] == "sent while the broker is down"
            assert pending.result(WAIT) is True
            conn.send_frame(recorded("new_message"))
            assert client.next_event()[1] == "hello"
            assert len(conn.recv_frames(3)) == 3
    finally:
        client.disconnect(timeout=1.0)
        runner.join(WAIT)


def test_two_clients_in_one_process(clients: list) -> None:
    with FakeBroker() as one, FakeBroker() as two:
        first = started(clients, Recorder(port=one.port))
        second = started(clients, Recorder(port=two.port))
        assert first.connect() and second.connect()
        conn1, conn2 = one.accept(), two.accept()
        conn1.send_frame(recorded("new_message"))
        conn2.send_frame(recorded("new_message"))
        assert len(conn1.recv_frames(3)) == len(conn2.recv_frames(3)) == 3
        first.disconnect()
        conn1.wait_closed()
        conn2.send_frame(recorded("new_message", 1))
        assert conn2.recv_frame()["params"]["message"] == "room:bin"
        assert second.connected and not first.connected


def test_connect_disconnect_and_again(broker: FakeBroker) -> None:
    client = Recorder(port=broker.port)
    for round_ in range(3):
        assert client.connect()
        conn = broker.accept()
        assert accept_client(conn, f"r{round_}")["accepted"] is True
        client.disconnect()
        conn.wait_closed()
        fresh = Recorder(port=broker.port)
        assert fresh.connect()
        broker.accept()
        fresh.disconnect()


def test_each_connection_has_its_own_io_thread_and_leaves_nothing_behind(broker: FakeBroker) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def io_threads() -> int:
        return sum(thread.name == "pystrands-reactor" for thread in threading.enumerate())

    client = Recorder(port=broker.port)
    assert client.connect()
    broker.accept()
    client.disconnect()
    wait_for(lambda: io_threads() == 0)
    fds, threads = open_fds(), threading.active_count()
    for _ in range(5):
        first, second = Recorder(port=broker.port), Recorder(port=broker.port)
        assert first.connect() and second.connect()
        conns = broker.accept(), broker.accept()
        assert io_threads() == 2
        first.disconnect()
        second.disconnect()
        for conn in conns:
            conn.close()
    wait_for(lambda: io_threads() == 0)
    assert threading.active_count() <= threads, "a connection left a thread behind"
    assert open_fds() <= fds, "each connection's reactor closes what it opened"


def test_connect_when_connected_is_true_and_keeps_the_connection(broker: FakeBroker, clients: list) -> None:
    client = started(clients, PyStrandsClient(port=broker.port))
    assert client.connect() and client.connect()
    broker.accept()
    with pytest.raises(AssertionError):
        broker.accept(timeout=0.3)


def test_a_handler_thread_send_joined_before_the_handlers_own_keeps_program_order(
        broker: FakeBroker, clients: list) -> None:
    class Helper(PyStrandsClient):
        def on_message(self, message: str, context: Context) -> None:
            helper = threading.Thread(target=self.send_room_message, args=(context.room_id, "from the helper"))
            helper.start()
            helper.join()
            self.send_room_message(context.room_id, "from the handler")

    client = started(clients, Helper(port=broker.port))
    assert client.connect()
    conn = broker.accept()
    conn.send_frame(event("new_message", nested_context("a", "r", {}), message="go"))
    assert [frame["params"]["message"] for frame in conn.recv_frames(2)] == ["from the helper", "from the handler"]


def test_a_new_connection_after_giving_up_on_a_hung_handler_is_not_disturbed_by_the_old_one(
        broker: FakeBroker, clients: list) -> None:
    client, old_conn, release = held_in_a_handler(clients, broker)
    client.disconnect(timeout=0.2)  # gives up: the socket is shut under the handler
    old_conn.wait_closed()
    assert client.connect()
    conn = broker.accept()
    assert client.broadcast_message("on the new connection").result(WAIT) is True
    assert conn.recv_frame()["params"] == {"message": "on the new connection"}
    release.set()  # the old handler ends: its send is its own connection's, closed under it, so dropped
    assert client.late.get(timeout=WAIT).result(WAIT) is False
    assert client.connected
    assert client.broadcast_message("still served").result(WAIT) is True
    assert conn.recv_frame()["params"] == {"message": "still served"}


def test_connecting_again_while_retrying_gives_up_nothing(free_port: int, caplog: pytest.LogCaptureFixture) -> None:
    client = PyStrandsClient(port=free_port, reconnect_delay=0.05)
    try:
        assert client.connect() is False  # retrying in the background
        with FakeBroker(free_port) as broker:
            assert client.connect() is True
            broker.accept()
    finally:
        client.disconnect(timeout=1.0)
    assert not [record for record in caplog.records if "still running" in record.getMessage()]
