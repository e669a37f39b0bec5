"""``twistd pystrands --backend mod.obj`` with a face object: its own broker and settings, unless a flag says otherwise.

A face (PyStrandsClient, AsyncPyStrandsClient, PyStrands) is built with where
its broker is and how to talk to it; twistd used to drop all of it and connect
to localhost:8081 without a token (review F11).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
from collections.abc import Iterator

import pytest
from twisted.internet.endpoints import clientFromString
from twisted.python import usage
from websockets.sync.client import connect

from pystrands.tap import Options
from tests.demo.support import Launch, launching, open_when_served, start_broker
from tests.faces import sample_backends
from tests.support.ports import free_port

TWISTD = str(pathlib.Path(sys.executable).parent / "twistd")
SAMPLES = "tests.faces.sample_backends"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_a_face_object_gives_its_broker_and_the_settings_it_was_built_with() -> None:
    options = parse("--backend", f"{SAMPLES}.configured")
    settings = options["settings"]
    assert options["broker"] == "tcp:host=127.0.0.1:port=18681"
    assert (settings.backend_token, settings.reconnect_delay, settings.concurrency, settings.idle_timeout,
            settings.max_pending_events) == ("s3cret", 0.5, 3, 20.0, 50)
    assert settings.send_buffer_size == 10_000 and settings.auto_reconnect, "not set on the object: the defaults"


def test_flags_given_win_over_the_face_objects_settings() -> None:
    options = parse("--backend", f"{SAMPLES}.configured", "--broker", "tcp:host=10.0.0.1:port=9000",
                    "--backend-token", "other", "--reconnect-delay", "0.2", "--concurrency", "5", "--no-reconnect")
    settings = options["settings"]
    assert options["broker"] == "tcp:host=10.0.0.1:port=9000"
    assert (settings.backend_token, settings.reconnect_delay, settings.concurrency, settings.auto_reconnect,
            settings.idle_timeout) == ("other", 0.2, 5, False, 20.0)


@pytest.mark.parametrize("spec", [f"{SAMPLES}.BlockingEcho", f"{SAMPLES}:app", "tests.core.sample_backends.Echo"])
def test_without_settings_of_its_own_a_backend_gets_the_twistd_defaults(spec: str) -> None:
    """A face class made with no arguments keeps twistd's concurrency (64), not the blocking face's own (1)."""
    options = parse("--backend", spec)
    assert options["broker"] == "tcp:host=localhost:port=8081"
    assert options["settings"].concurrency == 64 and options["settings"].backend_token is None


def test_an_ipv6_address_is_quoted_in_the_endpoint_string() -> None:
    """Twisted's tcp: client connects to an IPv6 literal as well; its colons must be escaped."""
    options = parse("--backend", f"{SAMPLES}.configured_v6")
    endpoint = clientFromString(None, options["broker"])
    assert (endpoint._host, endpoint._port) == ("::1", 18682)


def test_a_face_object_changed_into_nonsense_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sample_backends.configured_v6, "port", 0)  # attributes may change until connect
    with pytest.raises(usage.UsageError, match=r"^--backend '.*configured_v6': port must be 1-65535, not 0$"):
        parse("--backend", f"{SAMPLES}.configured_v6")


def test_an_option_that_does_not_fit_the_objects_settings_is_refused_naming_both() -> None:
    with pytest.raises(usage.UsageError, match=r"^--backend '.*configured' with the options given: max_reconnect_delay"
                                               r" \(2.0\) must be >= reconnect_delay \(3.0\)$"):
        parse("--backend", f"{SAMPLES}.configured", "--reconnect-delay", "3")


def test_the_help_tells_the_defaults_and_that_the_object_may_set_them() -> None:
    text = " ".join(str(Options()).split())  # the help's lines are wrapped
    assert "tcp:host=localhost:port=8081" in text and "64" in text
    assert text.count("or the backend object's") >= 8, text


@pytest.fixture
def launch(tmp_path: pathlib.Path) -> Iterator[Launch]:
    with launching(tmp_path, grace=10.0) as start:
        yield start


@pytest.mark.parametrize(
    ("built_with", "flags"),
    [
        ("port=TCP_PORT, backend_token='s3cret'", ()),
        ("port=DEAD_PORT, backend_token='wrong'",
         ("--broker", "tcp:host=127.0.0.1:port=TCP_PORT", "--backend-token", "s3cret")),
    ],
    ids=["the-objects-own", "flags-win"],
)
def test_twistd_serves_a_real_broker_as_the_face_object_or_the_flags_say(
        launch: Launch, tmp_path: pathlib.Path, built_with: str, flags: tuple[str, ...]) -> None:
    broker = start_broker(launch, "--backend-token", "s3cret")
    dead_port = free_port()

    def fill(text: str) -> str:
        return text.replace("TCP_PORT", str(broker.tcp_port)).replace("DEAD_PORT", str(dead_port))

    (tmp_path / "faceobj.py").write_text(
        f"from {SAMPLES} import BlockingEcho\n"
        f"client = BlockingEcho(host='127.0.0.1', reconnect_delay=0.1, {fill(built_with)})\n")
    backend = launch([TWISTD, "-n", "--pidfile=", "--logfile=-", "pystrands", "--backend", "faceobj.client",
                      *map(fill, flags)], name="twistd", env={"PYTHONPATH": str(tmp_path)})
    with contextlib.ExitStack() as opened:
        ws = open_when_served(lambda url: opened.enter_context(connect(url, open_timeout=5)), f"{broker.ws_url}/room")
        ws.send("hi")
        assert str(ws.recv(timeout=10)).startswith("hi:pystrands-handler-")
    assert backend.stop() in (0, -15)
    output = backend.output()
    assert f"Connected to the broker at tcp:host=127.0.0.1:port={broker.tcp_port}" in output, output
    assert "Traceback" not in output, output
