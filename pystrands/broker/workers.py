"""``--workers N``: N broker processes on this machine, sharing both ports, one cluster over Redis.

A supervisor (this module, an ``IService``) holds the WebSocket and backend
ports bound with ``SO_REUSEPORT`` (bound, not listening: it takes no
connection, but no other program can take the ports while workers restart,
and port 0 becomes one port for all), then starts each worker as
``python -m pystrands worker SUPERVISOR_PID <the same options>``: an ordinary
``pystrands server`` that listens on those ports through the
``pystrands-reuseport`` endpoint (:mod:`~pystrands.broker.reuseport`), so
the kernel spreads new connections over the workers. The workers meet as
nodes of the cluster named by ``--redis`` and ``--cluster-name``.

Each worker logs to its stderr as JSON, one event a line; the supervisor
hands every line its workers write to its ``relay``, by default to
``twisted.logger`` (:mod:`~pystrands.broker.worker_log`).

Stopping the supervisor (Ctrl-C, SIGTERM) sends SIGTERM to every worker,
which closes its clients with 1001 as a single broker does. A worker that
dies is started again after a delay that doubles while it keeps dying
(:class:`WorkerSlot`); one that keeps dying before it listens (or is killed
for not listening within ``start_timeout``) makes the supervisor stop
everything and exit 1.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..settings import check_integer, check_number
from .config import ENVIRONMENT, REDIS_URL_VARIABLE, BrokerConfig, Options
from .redis_url import PASSWORD_SHOWN, password_on_command_line
from .reuseport import reuseport_socket
from .worker_log import Relay, WorkerLines, log_output, worker_log_observer, worker_output

__all__ = ["RestartPolicy", "SupervisorGone", "WorkerSlot", "WorkerSupervisor", "WorkersFailed", "listening_line",
           "run_worker", "worker_arguments"]

log = Logger()

#: What a worker prints on stdout once both its ports listen (``python -m pystrands server``'s line).
READY_LINE = b"PyStrands broker: "
#: prctl(2)'s option that signals a process when its parent dies (Linux, <sys/prctl.h>).
PR_SET_PDEATHSIG = 1


class WorkersFailed(Exception):
    """The supervisor gave up: the ports could not be held, or a worker kept dying before it listened."""


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead worker is started again, and when the supervisor gives up."""

    #: Seconds before the first restart of a worker.
    first_delay: float = 0.5
    #: The delay doubles at each death in a row, up to this.
    max_delay: float = 30.0
    #: A worker that ran this long before dying starts again after ``first_delay``.
    stable_after: float = 30.0
    #: Deaths in a row before listening, of one worker, after which the supervisor gives up.
    max_start_failures: int = 5
    #: Seconds a worker has to listen after it starts; one still silent then is killed (a start failure).
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        check_number("first_delay", self.first_delay, minimum=0)
        check_number("max_delay", self.max_delay, minimum=self.first_delay)
        check_number("stable_after", self.stable_after, minimum=0, inclusive=False)
        check_integer("max_start_failures", self.max_start_failures, minimum=1)
        check_number("start_timeout", self.start_timeout, minimum=0, inclusive=False)


class WorkerSlot:
    """One worker number across its restarts: the restart delays and the give-up count.

    ``clock`` (an ``IReactorTime``) tells how long each run lasted.
    """

    def __init__(self, number: int, policy: RestartPolicy, clock: IReactorTime) -> None:
        #: The worker's number, 1 to N, as the log names it.
        self.number = number
        self.policy = policy
        self.clock = clock
        #: The running process, if any, and its pid (kept after it ends, for the log).
        self.process: IProcessTransport | None = None
        self.pid: int | None = None
        #: True once the current run said that it listens.
        self.ready = False
        #: The pending restart, if any; the deadline of the current run's start, while it has not listened.
        self.restart: IDelayedCall | None = None
        self.deadline: IDelayedCall | None = None
        self._started = 0.0
        self._delay = policy.first_delay
        self._start_failures = 0

    def started(self, pid: int | None) -> None:
        """A run began, as process ``pid``."""
        self.pid, self.ready, self._started = pid, False, self.clock.seconds()

    def listening(self) -> None:
        """The run listens on both ports: deaths before listening no longer count toward giving up."""
        self.ready, self._start_failures = True, 0

    def ended(self) -> float | None:
        """The run ended: seconds to wait before the next, or None to give up."""
        if not self.ready:
            self._start_failures += 1
            if self._start_failures >= self.policy.max_start_failures:
                return None
        if self.clock.seconds() - self._started >= self.policy.stable_after:
            self._delay = self.policy.first_delay
        delay, self._delay = self._delay, min(self._delay * 2, self.policy.max_delay)
        return delay


class WorkerProtocol(ProcessProtocol):
    """Watches one worker process: its ready line on stdout, its other lines for the relay, its end."""

    def __init__(self, supervisor: WorkerSupervisor, slot: WorkerSlot) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.ended: Deferred[None] = Deferred()
        self._stdout, self._stderr = WorkerLines(), WorkerLines()

    def outReceived(self, data: bytes) -> None:
        """The worker's ready line marks it listening; other lines go to the relay."""
        self._out(self._stdout.feed(data))

    def _out(self, lines: list[bytes]) -> None:
        for line in lines:
            if line.startswith(READY_LINE) and not self.slot.ready:
                self.supervisor.worker_listening(self.slot)
            else:
                self._relay("stdout", line)

    def errReceived(self, data: bytes) -> None:
        """The worker's log events, and anything else it writes on stderr, go to the relay."""
        self._err(self._stderr.feed(data))

    def _err(self, lines: list[bytes]) -> None:
        for line in lines:
            self._relay("stderr", line)

    def _relay(self, stream: Literal["stdout", "stderr"], line: bytes) -> None:
        self.supervisor.relay(worker_output(self.slot.number, self.slot.pid, stream, line.decode(errors="replace")))

    def processEnded(self, reason: Failure) -> None:
        """Relay the worker's last lines if they had no newline, and tell the supervisor how it ended."""
        self._out(self._stdout.end())
        self._err(self._stderr.end())
        self.supervisor.worker_ended(self.slot, reason)
        self.ended.callback(None)


def describe_end(reason: Failure) -> str:
    """How a process ended, as a person reads it: ``exit status 1``, ``killed by SIGKILL``."""
    if reason.check(ProcessDone):
        return "exit status 0"
    ended = reason.value
    if isinstance(ended, ProcessTerminated) and ended.signal is not None:
        return f"killed by {signal.Signals(ended.signal).name}"
    return f"exit status {getattr(ended, 'exitCode', None)}"


class WorkerSupervisor(Service):
    """Runs ``config.workers`` broker processes on shared ports and keeps them running.

    ``arguments`` are the worker's command-line options without the ports
    (see :func:`worker_arguments`). :attr:`ready` fires with (WebSocket port,
    backend port) once every worker listens; :attr:`failed` fails with
    :class:`WorkersFailed` if the supervisor gives up, and then stops every worker.
    ``relay`` gets every line the workers write but their ready lines.
    """

    def __init__(self, config: BrokerConfig, arguments: list[str], reactor: Any = None,
                 policy: RestartPolicy | None = None, stop_timeout: float = 10.0,
                 relay: Relay = log_output) -> None:
        if not isinstance(config, BrokerConfig):
            raise TypeError(f"config must be a BrokerConfig, not {type(config).__name__}")
        if not isinstance(arguments, list) or not all(isinstance(each, str) for each in arguments):
            raise TypeError(f"arguments must be a list of str, not {arguments!r}")
        if not callable(relay):
            raise TypeError(f"relay must be callable, not {type(relay).__name__}")
        self.config = config
        self.relay = relay
        self.arguments = arguments
        self.reactor = reactor
        self.policy = policy or RestartPolicy()
        #: Seconds workers get to stop after SIGTERM before SIGKILL.
        self.stop_timeout = stop_timeout
        #: Fires with (WebSocket port, backend port) once every worker has listened once.
        self.ready: Deferred[tuple[int, int]] = Deferred()
        #: Fails with WorkersFailed when the supervisor gives up; never fires otherwise.
        self.failed: Deferred[None] = Deferred()
        self.slots: list[WorkerSlot] = []
        self._protocols: dict[int, WorkerProtocol] = {}
        self._held: list[socket.socket] = []
        #: (WebSocket port, backend port) the supervisor holds, once started.
        self.ports = (0, 0)
        self._stopping = False

    def startService(self) -> None:
        """Hold both ports, then start every worker."""
        if self.reactor is None:
            from twisted.internet import reactor  # the outermost layer's choice: the global one
            self.reactor = reactor
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        config = self.config
        if config.redis is not None and password_on_command_line(config.redis, sys.argv):
            log.warn(PASSWORD_SHOWN)  # once: the workers get the URL in their environment
        try:
            self._held = [reuseport_socket(config.ws_interface, config.ws_port, alone=True),
                          reuseport_socket(config.tcp_interface, config.tcp_port, alone=True)]
        except CannotListenError as exc:
            self._give_up(str(exc))
            return
        self.ports = (self._held[0].getsockname()[1], self._held[1].getsockname()[1])
        self.slots = [WorkerSlot(number, self.policy, self.reactor) for number in range(1, config.workers + 1)]
        for slot in self.slots:
            self._spawn(slot)

    def worker_command(self) -> list[str]:
        """The command line of every worker: the options, then the shared ports as endpoints."""
        config, (ws_port, tcp_port) = self.config, self.ports
        return [sys.executable, "-m", "pystrands", "worker", str(os.getpid()), *self.arguments,
                "--ws-endpoint", _reuseport(ws_port, config.ws_interface),
                "--tcp-endpoint", _reuseport(tcp_port, config.tcp_interface)]

    def worker_environment(self) -> dict[str, str]:
        """The environment of every worker: this process's, with the Redis URL (never on a command line)."""
        environment = dict(os.environ)
        if self.config.redis is not None:
            environment[REDIS_URL_VARIABLE] = self.config.redis
        return environment

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.restart = None
        protocol = WorkerProtocol(self, slot)
        command = self.worker_command()
        process = self.reactor.spawnProcess(protocol, command[0], command, env=self.worker_environment(),
                                            childFDs={1: "r", 2: "r"})
        self._protocols[slot.number] = protocol
        slot.process = process
        slot.started(process.pid)
        slot.deadline = self.reactor.callLater(self.policy.start_timeout, self._too_slow, slot)

    def _too_slow(self, slot: WorkerSlot) -> None:
        slot.deadline = None
        log.warn("Worker {number} (pid {pid}) did not listen within {seconds} s; killing it",
                 number=slot.number, pid=slot.pid, seconds=self.policy.start_timeout)
        _signal_all([slot], "KILL")

    def worker_listening(self, slot: WorkerSlot) -> None:
        """A worker printed its ready line; once all have, :attr:`ready` fires."""
        slot.listening()
        _cancel(slot.deadline)
        log.info("Worker {number} (pid {pid}) listens", number=slot.number, pid=slot.pid)
        if not self.ready.called and all(each.ready for each in self.slots):
            self.ready.callback(self.ports)

    def worker_ended(self, slot: WorkerSlot, reason: Failure) -> None:
        """A worker ended: start it again after the policy's delay, or give up."""
        slot.process = None
        _cancel(slot.deadline)
        delay = slot.ended()
        if self._stopping:
            return
        how = describe_end(reason)
        if delay is None:
            self._give_up(f"worker {slot.number} (pid {slot.pid}) ended ({how}) {self.policy.max_start_failures}"
                          " times in a row before listening")
            return
        log.warn("Worker {number} (pid {pid}) ended ({how}); starting it again in {delay:.1f} s",
                 number=slot.number, pid=slot.pid, how=how, delay=delay)
        slot.restart = self.reactor.callLater(delay, self._spawn, slot)

    def _give_up(self, why: str) -> None:
        log.critical("PyStrands workers: giving up: {why}", why=why)
        self.stopService()
        self.failed.errback(WorkersFailed(why))

    def stopService(self) -> Deferred[None]:
        """SIGTERM every worker (they close their clients with 1001); SIGKILL those left after ``stop_timeout``."""
        if self._stopping:
            return self._stopped
        self._stopping = True
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._stopped: Deferred[None] = Deferred.fromCoroutine(self._stop())
        return self._stopped

    async def _stop(self) -> None:
        running = [slot for slot in self.slots if slot.process is not None]
        for slot in self.slots:
            _cancel(slot.restart)
            _cancel(slot.deadline)
        _signal_all(running, "TERM")
        deadline = self.reactor.callLater(self.stop_timeout, _signal_all, running, "KILL")
        await DeferredList([self._protocols[slot.number].ended for slot in running])
        _cancel(deadline)
        for sock in self._held:
            sock.close()


def _cancel(call: IDelayedCall | None) -> None:
    """Cancel ``call`` unless it is None, has run, or was cancelled."""
    if call is not None and call.active():
        call.cancel()


def _signal_all(slots: list[WorkerSlot], name: str) -> None:
    """Send SIG``name`` to the processes of ``slots`` that still run."""
    for slot in slots:
        if slot.process is not None:
            slot.process.signalProcess(name)


def _reuseport(port: int, interface: str) -> str:
    """The ``pystrands-reuseport`` endpoint string of ``interface:port``."""
    return f"pystrands-reuseport:{port}:interface={quoteStringArgument(interface)}"


def listening_line(config: BrokerConfig, ports: tuple[int, int]) -> str:
    """The line saying that every worker listens, and where (the CLI prints it; under twistd it is logged)."""
    return (f"PyStrands broker: {config.workers} workers, WebSocket on port {ports[0]} (/ws/...),"
            f" backends on {config.tcp_interface or '*'}:{ports[1]}")


def worker_arguments(options: Options) -> list[str]:
    """The parsed broker options as a worker's command line, without ``--workers`` and the ports.

    Rebuilt from the parsed values, not copied from ``sys.argv``: the same
    for ``python -m pystrands server`` and ``twistd pystrands-broker``. An
    option set by its environment variable is left to the environment, which
    the workers inherit; the Redis URL always goes to them in their
    environment (see :meth:`WorkerSupervisor.worker_environment`), so that a
    password in it stays out of their command lines.
    """
    from_environment = {option for variable, option in ENVIRONMENT.items() if options.environ.get(variable, "")}
    arguments: list[str] = []
    for name, *_ in options.optParameters:
        if options[name] is not None and name not in ("workers", "ws-port", "tcp-port", "redis", *from_environment):
            arguments += [f"--{name}", str(options[name])]
    for name, *_ in options.optFlags:
        if options[name]:
            arguments.append(f"--{name}")
    return arguments


class SupervisorGone(RuntimeError):
    """A worker's supervisor died before the worker could ask to die with it: the worker must not start."""


def run_worker(supervisor: int, arguments: list[str]) -> int:
    """One worker: ``python -m pystrands server`` that leaves Ctrl-C to its supervisor and dies with it.

    The terminal sends SIGINT to the whole process group; the supervisor
    passes it on as SIGTERM, so the worker ignores it (two stops would be one
    too many). On Linux the worker gets SIGTERM if its parent dies; a parent
    that is no longer ``supervisor`` (the pid of the supervisor that started
    it) died before that was asked: SupervisorGone. Its log goes to stderr
    as JSON, one event a line, for the supervisor to relay.
    """
    check_integer("the supervisor's pid", supervisor, minimum=1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        raise SupervisorGone(f"its supervisor (pid {supervisor}) is gone; not starting")
    from ..__main__ import server

    return server(arguments, worker_log_observer(sys.stderr))
