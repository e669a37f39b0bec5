"""``python -m pystrands server`` and ``twistd pystrands-broker``, run as subprocesses."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import urllib.request
from typing import Any, Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
TWISTD = pathlib.Path(sys.executable).with_name("twistd")


def env(**variables: str) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("PYSTRAND_")}
    return {**base, **variables}


def run(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pystrands", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=env(**variables))



@pytest.fixture
def serve() -> Iterator[Any]:
    """Start ``python -m pystrands server ...``; yields (process, its first stdout line)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **variables: str) -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen([sys.executable, "-m", "pystrands", "server", *args], cwd=ROOT,
                                   env=env(**variables), stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        started.append(process)
        return process, process.stdout.readline()

    yield start
    for process in started:
        process.terminate()
        process.wait(10)
        process.stdout.close()


BAD_ARGUMENTS = [
    (["server", "--ws-port", "abc"], {}, "--ws-port 'abc' is not a whole number"),
    (["server", "--tcp-port", "70000"], {}, "--tcp-port must be 0-65535"),
    (["server", "--queue-size", "-1"], {}, "--queue-size must be >= 0"),
    (["server", "--queue-size", "1.5"], {}, "--queue-size '1.5' is not a whole number"),
    (["server", "--auth-timeout", "soon"], {}, "--auth-timeout 'soon' is not a number"),
    (["server", "--auth-timeout", "0"], {}, "--auth-timeout must be a finite number > 0"),
    (["server", "--auth-timeout", "nan"], {}, "--auth-timeout must be a finite number > 0"),
    (["server", "--max-message-size", "0"], {}, "--max-message-size must be >= 1"),
    (["server", "--max-message-size", "17000000"], {}, "--max-message-size must be <= 16711680"),
    (["server", "--max-fragments", "0"], {}, "--max-fragments must be >= 1"),
    (["server", "--max-clients-per-address", "-1"], {}, "--max-clients-per-address must be >= 0"),
    (["server", "--handshake-timeout", "0"], {}, "--handshake-timeout must be a finite number > 0"),
    (["server", "--ping-interval", "-1"], {}, "--ping-interval must be a finite number >= 0"),
    (["server", "--client-idle-timeout", "inf"], {}, "--client-idle-timeout must be a finite number >= 0"),
    (["server", "--client-write-timeout", "x"], {}, "--client-write-timeout 'x' is not a number"),
    (["server", "--write-timeout", "0"], {}, "--write-timeout must be a finite number > 0"),
    (["server", "--max-client-rate", "-3"], {}, "--max-client-rate must be a finite number >= 0"),
    (["server", "--allowed-origins", "evil"], {}, "--allowed-origins 'evil' is not an origin pattern"),
    (["server", "--allowed-origins", "https://a.example,ftp//x"], {}, "'ftp//x' is not an origin pattern"),
    (["server", "--ws-endpoint", "bogus:1"], {}, "--ws-endpoint 'bogus:1' is not a usable server endpoint"),
    (["server", "--tcp-endpoint", "tcp:notaport"], {}, "--tcp-endpoint 'tcp:notaport' is not a usable"),
    (["server", "--ws-endpoint", "ssl:8443:privateKey=/no/such.pem"], {}, "--ws-endpoint 'ssl:8443"),
    (["server", "--max-clients", "many"], {}, "--max-clients 'many' is not a whole number"),
    (["server", "--static", "/no/such/dir"], {}, "--static '/no/such/dir' is not a directory"),
    (["server", "--backend-token", ""], {}, "--backend-token must not be empty (leave it out for no token)"),
    (["server", "--bogus"], {}, "option --bogus not recognized"),
    (["server", "--ws-port"], {}, "option --ws-port requires argument"),
    (["server", "--ws-port", "0", "8081"], {}, "unexpected argument: 8081"),
    (["server", "--max-client-buffer", "0"], {}, "--max-client-buffer must be >= 1, not 0"),
    (["server", "--max-client-buffer", "8M"], {}, "--max-client-buffer '8M' is not a whole number"),
    (["server", "--ws-port", "9000", "--tcp-port", "9000"], {}, "--ws-port must not be the backend port too (9000)"),
    (["server", "--tcp-port", "9001"], {"PYSTRAND_WS_PORT": "9001"}, "PYSTRAND_WS_PORT must not be the backend port"),
    (["server", "--cluster-heartbeat", "0.01"], {}, "--cluster-heartbeat must be 0.5-300 seconds, not 0.01"),
    (["server", "--cluster-heartbeat", "86400"], {}, "--cluster-heartbeat must be 0.5-300 seconds, not 86400"),
    (["server", "ws-port", "0"], {}, "unexpected arguments: ws-port 0"),
    (["server"], {"PYSTRAND_WS_PORT": "abc"}, "PYSTRAND_WS_PORT 'abc' is not a whole number"),
    (["server"], {"PYSTRAND_TCP_PORT": "99999"}, "PYSTRAND_TCP_PORT must be 0-65535"),
    (["server"], {"PYSTRAND_QUEUE_SIZE": "-5"}, "PYSTRAND_QUEUE_SIZE must be >= 0"),
    ([], {}, "usage: python -m pystrands server"),
    (["serve"], {}, "unknown command 'serve'"),
]


@pytest.mark.parametrize("args, variables, message", BAD_ARGUMENTS,
                         ids=[" ".join(args) + " " + " ".join(variables) for args, variables, _ in BAD_ARGUMENTS])
def test_bad_usage_is_one_line_and_exit_2(args: list[str], variables: dict[str, str], message: str) -> None:
    result = run(*args, **variables)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_help_says_how_to_run_it_in_plain_text() -> None:
    result = run("server", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "Usage: python -m pystrands server [options]"
    assert "--ws-port=" in result.stdout and "Runs the embedded broker" in result.stdout
    assert "``" not in result.stdout  # no reStructuredText shown raw


def test_every_limit_of_a_slow_client_is_a_flag() -> None:
    from pystrands.broker.config import Options

    options = Options(environ={})
    options.parseOptions(["--max-client-buffer", "65536", "--client-write-timeout", "3"])
    assert (options["config"].max_client_buffer, options["config"].client_write_timeout) == (65536, 3.0)


def test_one_port_number_on_two_separate_interfaces_is_fine() -> None:
    from pystrands.broker.config import BrokerConfig

    config = BrokerConfig(ws_port=9000, tcp_port=9000, ws_interface="192.0.2.1", tcp_interface="127.0.0.1")
    assert config.ws_port == config.tcp_port == 9000  # two sockets that never take the same connection
    with pytest.raises(ValueError, match="ws_port must not be the backend port too"):
        BrokerConfig(ws_port=9000, tcp_port=9000, ws_interface="0.0.0.0", tcp_interface="127.0.0.1")


def test_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        result = run("server", "--ws-port", str(taken.getsockname()[1]), "--tcp-port", "0")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("pystrands server:")]
    assert len(errors) == 1 and "Address already in use" in errors[0]
    assert "Traceback" not in result.stderr


def test_an_endpoint_it_cannot_listen_on_is_named_in_one_line_and_exit_1(tmp_path: pathlib.Path) -> None:
    result = run("server", "--ws-port", "0", "--tcp-endpoint", f"unix:{tmp_path}/missing/broker.sock")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("pystrands server:")]
    expected = f"pystrands server: Couldn't listen on unix:{tmp_path}/missing/broker.sock: No such file or directory."
    assert errors == [expected]


def test_a_unix_socket_for_backends_is_named_as_a_person_reads_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broker.sock"
    process = subprocess.Popen([sys.executable, "-m", "pystrands", "server", "--ws-port", "0", "--tcp-endpoint",
                                f"unix:{path}:mode=660"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert f"backends on unix:{path}" in process.stdout.readline()  # not b'...', a bytes repr
        assert path.stat().st_mode & 0o777 == 0o660
        with socket.socket(socket.AF_UNIX) as backend:
            backend.settimeout(10)
            backend.connect(str(path))
            assert b'"action":"hello"' in backend.recv(4096)
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)
    assert "Backend connected: <backend #1 on a UNIX socket>" in errors, errors


def test_environment_wins_over_flags_and_sigterm_stops_cleanly(serve: Any) -> None:
    chosen = free_port()
    process, line = serve("--ws-port", "0", "--tcp-port", "0", PYSTRAND_WS_PORT=str(chosen))
    assert f"WebSocket on port {chosen} " in line
    assert "backends on 127.0.0.1:" in line
    process.terminate()
    assert process.wait(10) == 0


def test_static_directory_is_served_beside_ws(serve: Any, tmp_path: pathlib.Path) -> None:
    (tmp_path / "index.html").write_text("<p>demo</p>")
    _, line = serve("--ws-port", "0", "--tcp-port", "0", "--static", str(tmp_path))
    port = int(line.split("WebSocket on port ")[1].split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as page:
        assert page.read() == b"<p>demo</p>"
    with pytest.raises(InvalidStatus) as refused:  # /ws/ is still the broker's: no backend, 503
        connect(f"ws://127.0.0.1:{port}/ws/lobby", open_timeout=5)
    assert refused.value.response.status_code == 503


def test_twistd_plugin_runs_the_broker(tmp_path: pathlib.Path) -> None:
    process = subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "-l", "-", "pystrands-broker",
                                "--ws-port", "0", "--tcp-port", "0"], cwd=tmp_path, env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "PyStrands broker: WebSocket on" in line:
                break
        else:
            pytest.fail("twistd exited before the broker listened")
        assert "backends on 127.0.0.1:" in line
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def test_twistd_plugin_rejects_bad_options(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([str(TWISTD), "-n", "--pidfile=", "pystrands-broker", "--ws-port", "abc"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env())
    assert result.returncode != 0
    assert "--ws-port 'abc' is not a whole number" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("option", ["--ws-port", "--tcp-port"])
def test_twistd_plugin_refuses_a_taken_port_with_one_line_and_a_failing_exit(tmp_path: pathlib.Path,
                                                                          option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--ws-port": "0", "--tcp-port": "0", option: str(port)}
        result = subprocess.run([str(TWISTD), "-n", "--pidfile=", "pystrands-broker",
                                 *[part for pair in ports.items() for part in pair]],
                                capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env())
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{option} {port}: cannot listen: Address already in use" in output.strip().splitlines()[-1]
    assert "Traceback" not in output
