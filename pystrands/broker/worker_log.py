"""How a ``--workers`` worker's log reaches its supervisor's log.

A worker writes each log event on its stderr as one JSON line
(:func:`worker_log_observer`): its time, level, namespace, system and text,
the text formatted by the worker (a failure's traceback included, which
would not survive Twisted's own JSON form). The supervisor turns each line
its workers write into a :class:`WorkerOutput` and hands it to its relay:

* :func:`log_output` (the supervisor's default; ``twistd pystrands-broker``)
  publishes the worker's event to ``twisted.logger`` with the worker's time,
  namespace and level, its text unchanged after ``[worker N pid P]``: the
  observer's timestamp, which is the worker's time, is the only one;
* ``python -m pystrands server`` prints it as the worker's own text log
  would show it, after ``[worker N pid P]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import IO, Any, Literal

from twisted.logger import (
    FileLogObserver,
    InvalidLogLevelError,
    LogEvent,
    Logger,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
)

__all__ = ["LINE_LIMIT", "Relay", "WorkerLines", "WorkerOutput", "log_output", "worker_log_observer", "worker_output"]

log = Logger()

#: The format of an event rebuilt from a worker's line: the worker's own text, as it formatted it.
TEXT_FORMAT = "{worker_text}"
#: Bytes of a worker's line without its newline the supervisor holds; past it, what it has is relayed as a line.
LINE_LIMIT = 1024 * 1024


class WorkerLines:
    """One output stream of a worker, cut into lines (without their newline).

    What comes without a newline is held up to ``limit`` bytes, then relayed as a line of its own (a
    worker writing without newlines cannot make its supervisor hold its output whole), and whatever is
    held when the worker ends is its last line (:meth:`end`): its last words are not lost.
    """

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self.limit = limit
        self._held: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (or that pass the limit), in order."""
        *lines, rest = data.split(b"\n")
        if lines and self._held:
            lines[0] = b"".join([*self._held, lines[0]])
            self._held, self._size = [], 0
        if rest:
            self._held.append(rest)
            self._size += len(rest)
            if self._size >= self.limit:
                lines.extend(self.end())
        return lines

    def end(self) -> list[bytes]:
        """What is held (a line without its newline yet), as a line; none if nothing is."""
        held, self._held, self._size = b"".join(self._held), [], 0
        return [held] if held else []


@dataclass(frozen=True)
class WorkerOutput:
    """One line a worker wrote, as the supervisor relays it."""

    #: The worker's number (1 to N) and the pid of the run that wrote it.
    number: int
    pid: int | None
    #: "stdout" (what the worker printed) or "stderr" (its log, or what it wrote there outside the log).
    stream: Literal["stdout", "stderr"]
    #: The line as text: a log event as the worker's text log would show it (lines after the first start
    #: with a tab), without the final newline.
    text: str
    #: The worker's log event, when the line is one.
    event: LogEvent | None = None


#: What the supervisor calls with each line its workers write.
Relay = Callable[[WorkerOutput], None]


def worker_log_observer(stream: IO[Any]) -> FileLogObserver:
    """The worker's log observer: each event with text as one JSON line on ``stream``."""
    def as_line(event: LogEvent) -> str | None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        if not text:
            return None
        level = event.get("log_level")
        return json.dumps({"time": event.get("log_time"), "level": level.name if level else None,
                           "namespace": event.get("log_namespace"), "system": event.get("log_system"),
                           "text": text}) + "\n"

    return FileLogObserver(stream, as_line)


def worker_output(number: int, pid: int | None, stream: Literal["stdout", "stderr"], line: str) -> WorkerOutput:
    """What a worker's ``line`` (without its newline) is: one of its log events, or other text."""
    event = _log_event(line) if stream == "stderr" else None
    if event is None:
        return WorkerOutput(number, pid, stream, line)
    text = formatEventAsClassicLogText(event) or ""
    return WorkerOutput(number, pid, stream, text.removesuffix("\n"), event)


def _log_event(line: str) -> LogEvent | None:
    """The event a line of :func:`worker_log_observer` stands for, or None if ``line`` is not one."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(fields, dict) and isinstance(fields.get("text"), str)
            and isinstance(fields.get("time"), (int, float)) and isinstance(fields.get("namespace"), str)):
        return None
    event: LogEvent = {"log_format": TEXT_FORMAT, "worker_text": fields["text"], "log_time": fields["time"],
                       "log_namespace": fields["namespace"]}
    if isinstance(fields.get("system"), str):
        event["log_system"] = fields["system"]
    if isinstance(level := fields.get("level"), str):
        with suppress(InvalidLogLevelError):  # not one of Twisted's: the event has no level, as one without
            event["log_level"] = LogLevel.levelWithName(level)
    return event


def log_output(output: WorkerOutput) -> None:
    """Relay to ``twisted.logger``: a log event as itself (the worker's time, namespace and level) with its
    text after ``[worker N pid P]``; other lines at info (stdout) or warn (stderr), after the same prefix."""
    if output.event is None:
        level = LogLevel.info if output.stream == "stdout" else LogLevel.warn
        log.emit(level, "[worker {number} pid {pid}] {text}", number=output.number, pid=output.pid,
                 text=output.text)
        return
    log.observer(dict(output.event, log_format="[worker {worker_number} pid {worker_pid}] " + TEXT_FORMAT,
                      worker_number=output.number, worker_pid=output.pid))
