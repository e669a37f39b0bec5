"""``python -m pystrands server --workers N`` as an operator runs it: real processes, real sockets, real Redis."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.cluster.support import RedisServer
from tests.support.ports import free_port

from .conftest import ROOT, TIME, TIMEOUT, Supervisor, serve_echo

TWISTD = str(Path(sys.executable).parent / "twistd")


def open_clients_on_both_workers(supervisor: Supervisor) -> tuple[list[ClientConnection], dict[int, list[str]]]:
    """A backend on each worker, then clients until each worker has one; each client's echo checked."""
    served: dict[int, list[str]] = {}
    for worker in (1, 2):
        serve_echo(supervisor.backend_on(worker), worker, served)
    clients = []
    for number in range(60):
        client = connect(f"ws://127.0.0.1:{supervisor.ws_port}/ws/c{number}", open_timeout=TIMEOUT,
                         close_timeout=TIMEOUT).__enter__()  # entered, as websockets 17 wants
        clients.append(client)
        client.send(f"hi {number}")
        assert client.recv(TIMEOUT) == f"echo:hi {number}"
        if len(served) == 2:
            return clients, served
    raise AssertionError(f"60 clients all reached one worker: {served}")


def connect_when_known(url: str) -> ClientConnection:
    """A client, retried while its worker answers 503: a node learns of the others' backends by their heartbeats."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT).__enter__()
        except InvalidStatus as refused:  # noqa: PERF203  # a retry loop, not a hot path
            if refused.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_two_workers_serve_both_ports_and_echo_through_a_backend(start_workers) -> None:
    supervisor = start_workers(2)
    assert supervisor.workers == 2
    clients, served = open_clients_on_both_workers(supervisor)
    assert sorted(served) == [1, 2]
    assert sum(map(len, served.values())) == len(clients)
    for client in clients:
        client.close()


def test_a_room_spans_both_workers_with_one_backend(start_workers) -> None:
    """The workers are one cluster: clients on the worker without a backend are forwarded, rooms are shared."""
    supervisor = start_workers(2, "--cluster-heartbeat", "2")
    backend = supervisor.backend_on(1)
    served: dict[int, list[str]] = {}
    serve_echo(backend, 1, served, room="lobby")
    clients = [connect_when_known(f"ws://127.0.0.1:{supervisor.ws_port}/ws/c{number}") for number in range(24)]
    holders = {supervisor.worker_serving(client.socket.getsockname()[1]) for client in clients}
    assert holders == set(supervisor.worker_pids().values())  # 24 clients, both workers (all on one: 1 in 8 million)
    assert len(served[1]) == 24  # every handshake reached the one backend
    for text in ("to everyone", "once"):
        backend.send_frame({"request_id": "r", "action": "message_to_room",
                            "params": {"room_id": "lobby", "message": text}})
    for client in clients:
        assert [client.recv(TIMEOUT), client.recv(TIMEOUT)] == ["to everyone", "once"]  # once each, in order
        client.close()


def readyz(port: int) -> int:
    """The status of GET /readyz on a new connection (so on whichever worker the kernel picks)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=TIMEOUT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_readyz_is_the_same_from_every_worker(start_workers) -> None:
    """Without a backend every worker says 503; with one on worker 1, worker 2 says 200 too (it forwards)."""
    supervisor = start_workers(2, "--cluster-heartbeat", "2")
    assert {readyz(supervisor.ws_port) for _ in range(20)} == {503}
    backend = supervisor.backend_on(1)
    deadline = time.monotonic() + TIMEOUT
    while {readyz(supervisor.ws_port) for _ in range(5)} != {200}:
        assert time.monotonic() < deadline, "a worker stayed unready with a backend on the other one"
    assert {readyz(supervisor.ws_port) for _ in range(40)} == {200}  # both workers (one only: 1 in 10^12)
    backend.close()


def test_sigterm_stops_every_worker_and_clients_get_1001(start_workers) -> None:
    supervisor = start_workers(2)
    clients, _ = open_clients_on_both_workers(supervisor)
    pids = supervisor.worker_pids()
    assert supervisor.stop(signal.SIGTERM) == 0
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any("ended (" in line for line in supervisor.log), supervisor.log  # stopped, not restarted


def test_ctrl_c_to_the_process_group_stops_everyone_once(start_workers) -> None:
    """A terminal's Ctrl-C reaches the supervisor and the workers; the workers leave the stop to the supervisor."""
    supervisor = start_workers(2)
    clients, _ = open_clients_on_both_workers(supervisor)
    os.killpg(supervisor.process.pid, signal.SIGINT)
    assert supervisor.stop(None) == 0
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert sum("Received SIGTERM, shutting down." in line for line in supervisor.log) == 2, supervisor.log
    assert not any("Traceback" in line or "SIGINT" in line for line in supervisor.log if "[worker" in line)


def test_the_cli_prints_each_worker_log_line_after_the_workers_number_and_pid(start_workers) -> None:
    supervisor = start_workers(2)
    supervisor.backend_on(2).close()
    line = supervisor.log[-1]  # the one backend_on waited for
    match = re.fullmatch(rf"\[worker 2 pid (\d+)\] {TIME} \[pystrands\.broker\.backends#info\] Backend connected: .*",
                         line)
    assert match, line
    assert int(match[1]) == supervisor.worker_pids()[2]


def test_twistd_runs_the_workers_logs_their_events_and_stops_them(redis_url: str) -> None:
    """Under twistd a worker's log event is one event of twistd's log: the worker's namespace and level, one
    timestamp, the worker's text after ``[worker N pid P]`` (not a line of the supervisor's stderr)."""
    tcp_port = free_port()
    twistd = subprocess.Popen([TWISTD, "-n", "--pidfile=", "--logfile=-", "pystrands-broker", "--workers", "2",
                               "--redis", redis_url, "--ws-port", "0", "--tcp-port", str(tcp_port)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        supervisor = Supervisor(twistd, ready=False)
        ready = supervisor.wait_log(r"\[pystrands\.broker\.tap#info\] PyStrands broker: 2 workers, WebSocket on port"
                                    rf" (\d+) \(/ws/\.\.\.\), backends on 127\.0\.0\.1:{tcp_port}$")
        assert int(ready[1]) > 0  # --ws-port 0: the port chosen, as the CLI prints it
        pids = supervisor.worker_pids()
        assert len(pids) == 2
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=TIMEOUT):
            line = supervisor.wait_log(r"Backend connected").string
        match = re.fullmatch(rf"{TIME} \[pystrands\.broker\.backends#info\] \[worker ([12]) pid (\d+)\] Backend"
                             r" connected: [^\[]*", line)
        assert match, line
        assert pids[int(match[1])] == int(match[2])
        assert supervisor.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # twistd ends by the signal it got
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        stopping = {line.split("] ", 1)[1] for line in supervisor.log if "Received SIGTERM, shutting down." in line}
        assert stopping == {f"[worker {number} pid {pid}] Received SIGTERM, shutting down."  # after the system
                            for number, pid in pids.items()} | {"Received SIGTERM, shutting down."}  # and twistd's
        assert not any("stderr#" in line for line in supervisor.log), supervisor.log
    finally:
        twistd.kill()
        twistd.wait(TIMEOUT)


def test_a_killed_worker_is_restarted_and_the_log_says_so(start_workers) -> None:
    supervisor = start_workers(2)
    killed = supervisor.worker_pids()[1]
    os.kill(killed, signal.SIGKILL)
    supervisor.wait_log(rf"Worker 1 \(pid {killed}\) ended \(killed by SIGKILL\); starting it again in 0\.5 s")
    restarted = int(supervisor.wait_log(r"Worker 1 \(pid (\d+)\) listens")[1])
    assert restarted != killed
    backend = supervisor.backend_on(1)  # the new worker 1 takes connections on the shared port
    backend.close()
    assert supervisor.stop() == 0


def test_a_redis_password_on_the_command_line_is_warned_of_once_and_kept_off_the_workers_command_lines(
        start_workers, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", free_port(), "--requirepass", "s3cret")
    redis.start()
    try:
        supervisor = start_workers(2, redis=f"redis://:s3cret@127.0.0.1:{redis.port}/0")
        while sum("connected to Redis" in line for line in supervisor.log) < 2:  # the password reached both
            supervisor.wait_log("connected to Redis")
        for pid in supervisor.worker_pids().values():
            assert b"s3cret" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert supervisor.stop() == 0
    finally:
        redis.stop()
    warnings = [line for line in supervisor.log if "in the environment variable PYSTRAND_REDIS_URL instead" in line]
    assert len(warnings) == 1 and "[worker" not in warnings[0], warnings  # the supervisor's, not each worker's


def test_a_second_workers_broker_on_the_same_ports_is_refused(start_workers, redis_url: str) -> None:
    """SO_REUSEPORT would let it listen beside the first, and the kernel would split the clients between two
    unrelated clusters: it is refused, as any program on a taken port is."""
    first = start_workers(2)
    done = subprocess.run([sys.executable, "-m", "pystrands", "server", "--workers", "2", "--redis", redis_url,
                           "--cluster-name", "other", "--ws-port", str(first.ws_port), "--tcp-port", str(free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert (f"pystrands server: Couldn't listen on any:{first.ws_port}: [Errno 98] Address already in use."
            in done.stderr.splitlines())


def test_a_taken_port_is_a_failure_at_start(redis_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "pystrands", "server", "--workers", "2", "--redis", redis_url,
                               "--tcp-port", str(port), "--ws-port", str(free_port())],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert f"pystrands server: Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use." \
        in done.stderr.splitlines()


@pytest.mark.parametrize(("flags", "error"), [
    (["--workers", "0"], "--workers must be 1-256, not 0"),
    (["--workers", "-1"], "--workers must be 1-256, not -1"),
    (["--workers", "abc"], "--workers 'abc' is not a whole number"),
    (["--workers", "257", "--redis", "redis://127.0.0.1:6379"], "--workers must be 1-256, not 257"),
    (["--workers", "2"], ("--workers above 1 needs a Redis URL (--redis, PYSTRAND_REDIS_URL): the 2 workers are"
                          " nodes of one cluster, which meets in Redis")),
    (["--workers", "2", "--redis", "redis://127.0.0.1:6379", "--tcp-endpoint", "tcp:0"],
     ("--workers must be 1 with --tcp-endpoint: workers share plain ports (--ws-port, --tcp-port);"
      " a metrics listener would be one port per worker")),
    (["--workers", "2", "--redis", "redis://127.0.0.1:6379", "--metrics-endpoint", "tcp:0"],
     ("--workers must be 1 with --metrics-endpoint: workers share plain ports (--ws-port, --tcp-port);"
      " a metrics listener would be one port per worker")),
])
def test_bad_worker_options_are_usage_errors(flags: list[str], error: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pystrands", "server", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"pystrands server: {error} (see --help)\n"


def test_twistd_refuses_workers_without_redis() -> None:
    done = subprocess.run([TWISTD, "-n", "--pidfile=", "pystrands-broker", "--workers", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].endswith(
        ": --workers above 1 needs a Redis URL (--redis, PYSTRAND_REDIS_URL): the 3 workers are nodes of one cluster,"
        " which meets in Redis")
