"""What the supervisor makes of the lines its workers write, and how ``log_output`` hands them to twisted.logger."""

from __future__ import annotations

import io
import re

import pytest
from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from pystrands.broker import BrokerConfig
from pystrands.broker.worker_log import LINE_LIMIT, WorkerOutput, log_output, worker_log_observer
from pystrands.broker.workers import RestartPolicy, WorkerProtocol, WorkerSlot, WorkerSupervisor

from .conftest import TIME


def logged_as_worker(emit: str, *args: object, **fields: object) -> tuple[bytes, LogEvent]:
    """A log event as a worker writes it on its stderr (one JSON line), and the event as its Logger made it."""
    events: list[LogEvent] = []
    stream = io.StringIO()
    logger = Logger(namespace="pystrands.broker.backends", observer=lambda event: events.append(dict(event)))
    getattr(logger, emit)(*args, **fields)
    worker_log_observer(stream)(events[0])
    return stream.getvalue().encode(), events[0]


def watching(slot_number: int = 1, pid: int = 4321) -> tuple[WorkerProtocol, list[WorkerOutput]]:
    """A worker's protocol whose supervisor relays into a list."""
    relayed: list[WorkerOutput] = []
    supervisor = WorkerSupervisor(BrokerConfig(), [], Clock(), RestartPolicy(), relay=relayed.append)
    slot = WorkerSlot(slot_number, supervisor.policy, Clock())
    slot.started(pid)
    return WorkerProtocol(supervisor, slot), relayed


def test_a_log_event_line_is_relayed_as_the_event_and_its_text_even_when_split() -> None:
    line, event = logged_as_worker("info", "Backend connected: {backend}", backend="b1")
    protocol, relayed = watching(2, 777)
    protocol.errReceived(line[:10])
    assert relayed == []
    protocol.errReceived(line[10:])
    [output] = relayed
    assert (output.number, output.pid, output.stream) == (2, 777, "stderr")
    assert output.text == formatEventAsClassicLogText(event).removesuffix("\n")  # type: ignore[union-attr]
    assert output.event is not None and output.event["log_time"] == event["log_time"]
    assert re.fullmatch(TIME + r" \[pystrands\.broker\.backends#info\] Backend connected: b1", output.text)


def test_other_lines_are_relayed_as_text_and_the_ready_line_is_not() -> None:
    protocol, relayed = watching()
    protocol.errReceived(b"Traceback (most recent call last):\n[1, 2]\n{\"no\": \"time\"}\n"
                         b'{"time": "now", "namespace": "n", "text": "t"}\n')
    protocol.outReceived(b"PyStrands broker: WebSocket on port 1 (/ws/...), backends on *:2\nhello \xff\n")
    assert [(each.stream, each.text, each.event) for each in relayed] == [
        ("stderr", "Traceback (most recent call last):", None),
        ("stderr", "[1, 2]", None),
        ("stderr", '{"no": "time"}', None),
        ("stderr", '{"time": "now", "namespace": "n", "text": "t"}', None),
        ("stdout", "hello \ufffd", None),
    ]
    assert protocol.slot.ready


def test_a_failure_logged_by_a_worker_keeps_its_traceback() -> None:
    try:
        1 / 0  # noqa: B018  # a real exception for the failure to carry
    except ZeroDivisionError:
        line, _ = logged_as_worker("failure", "Backend crashed")
    protocol, relayed = watching()
    protocol.errReceived(line)
    [output] = relayed
    first, *rest = output.text.split("\n")
    assert first.endswith("[pystrands.broker.backends#critical] Backend crashed")
    assert rest[0] == "\tTraceback (most recent call last):"
    assert rest[-2:] == ["\tbuiltins.ZeroDivisionError: division by zero", "\t"]  # as the worker's text log ends it


@pytest.fixture
def published() -> list[LogEvent]:
    """The events published to twisted.logger's global publisher while a test runs."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_log_output_publishes_the_workers_event_with_its_time_level_and_text(published: list[LogEvent]) -> None:
    line, event = logged_as_worker("warn", "Queue of {room} full", room="lobby")
    protocol, relayed = watching(1, 555)
    protocol.errReceived(line)
    log_output(relayed[0])
    [again] = published
    assert (again["log_time"], again["log_level"], again["log_namespace"]) == (
        event["log_time"], LogLevel.warn, "pystrands.broker.backends")
    assert re.fullmatch(TIME + r" \[pystrands\.broker\.backends#warn\] \[worker 1 pid 555\] Queue of lobby full\n",
                        formatEventAsClassicLogText(again) or "")  # the observer's time only: one timestamp


def test_log_output_logs_other_lines_at_info_from_stdout_and_warn_from_stderr(published: list[LogEvent]) -> None:
    log_output(WorkerOutput(3, 9, "stdout", "printed {braces}"))
    log_output(WorkerOutput(3, 9, "stderr", "Traceback (most recent call last):"))
    assert [(each["log_level"], eventAsText(each, includeTimestamp=False, includeSystem=False))
            for each in published] == [
        (LogLevel.info, "[worker 3 pid 9] printed {braces}"),
        (LogLevel.warn, "[worker 3 pid 9] Traceback (most recent call last):"),
    ]


@pytest.mark.parametrize("relay", [None, "print", 42])
def test_the_supervisor_refuses_a_relay_that_is_not_callable(relay: object) -> None:
    with pytest.raises(TypeError, match=f"^relay must be callable, not {type(relay).__name__}$"):
        WorkerSupervisor(BrokerConfig(), [], relay=relay)  # type: ignore[arg-type]


def test_a_line_with_a_level_twisted_does_not_know_is_an_event_without_a_level() -> None:
    protocol, relayed = watching()
    protocol.errReceived(b'{"time": 0, "level": "loud", "namespace": "n", "system": "s", "text": "hi"}\n')
    [output] = relayed
    assert output.event is not None and "log_level" not in output.event
    assert output.text.endswith(" [s] hi")


def test_a_line_without_newline_is_relayed_once_past_the_limit_and_last_words_when_the_worker_ends() -> None:
    protocol, relayed = watching()
    chunk = b"x" * (LINE_LIMIT // 4)
    for _ in range(3):
        protocol.errReceived(chunk)
    assert relayed == []  # held: the line may yet end
    protocol.errReceived(chunk + b"y")
    protocol.errReceived(b"z\n")
    assert [len(each.text) for each in relayed] == [LINE_LIMIT + 1, 1]  # not held without end
    protocol.outReceived(b"printed last")
    protocol.errReceived(b'{"time": 0, "namespace": "n", "text": "logged last"}')
    protocol.processEnded(Failure(ProcessDone(0)))
    [printed, logged] = relayed[2:]
    assert (printed.stream, printed.text) == ("stdout", "printed last")
    assert logged.event is not None and re.fullmatch(TIME + r" \[n#-\] logged last", logged.text)
