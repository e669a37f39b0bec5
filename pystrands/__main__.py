"""``python -m pystrands <command>``: the command line.

Commands: ``server`` runs the embedded broker (the reference package's
``python -m pystrands server``, without a download); ``worker`` is how a
``--workers`` supervisor starts each of its workers. Errors are one line on
stderr and a non-zero exit: 2 for bad usage, 1 for a failure at run time
(a port in use).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.logger import ILogObserver
    from twisted.python.failure import Failure

    from .broker.worker_log import WorkerOutput

SERVER_HELP = ("Runs the embedded broker: WebSocket clients connect to --ws-port under /ws/..., backends to"
               " --tcp-port. Each PYSTRAND_* variable named above wins over its flag. A bad flag is one line on"
               " stderr and exit status 2; a failure at start (a port in use) exit status 1.")
USAGE = ("usage: python -m pystrands server [--ws-port 8080] [--tcp-port 8081] [--queue-size 1000] [...]"
         " | python -m pystrands --version")


def server(args: list[str], log_observer: ILogObserver | None = None) -> int:
    """Run the embedded broker until interrupted; its log (info and above) to ``log_observer``, text on stderr
    when None."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )
    from twisted.python import usage

    from .broker.config import Options
    from .broker.service import BrokerService, describe, fit_file_limit

    options = Options()
    options.synopsis = "Usage: python -m pystrands server [options]"
    options.longdesc = SERVER_HELP
    try:
        options.parseOptions(args)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    except usage.UsageError as exc:
        print(f"pystrands server: {exc} (see --help)", file=sys.stderr)
        return 2

    from twisted.internet import reactor  # the outermost entry point picks the global reactor

    observer = FilteringLogObserver(log_observer or textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    config = options["config"]
    fit_file_limit(config)
    exit_code = 0

    def stop_with(failure: Failure) -> None:
        """A port in use, or workers that keep failing: say why on stderr, and exit 1."""
        nonlocal exit_code
        exit_code = 1
        print(f"pystrands server: {failure.getErrorMessage()}", file=sys.stderr)
        if reactor.running:
            reactor.stop()

    if config.workers > 1:
        from .broker.workers import WorkerSupervisor, listening_line, worker_arguments

        supervisor = WorkerSupervisor(config, worker_arguments(options), reactor, relay=print_worker_output)
        supervisor.ready.addCallback(lambda ports: print(listening_line(config, ports), flush=True))
        supervisor.failed.addErrback(stop_with)
        reactor.addSystemEventTrigger("before", "shutdown", supervisor.stopService)
        reactor.callWhenRunning(supervisor.startService)
        reactor.run()
        return exit_code

    service = BrokerService(config, reactor)

    def listening(ports: tuple[int, int]) -> None:
        websocket = f"port {ports[0]}" if config.ws_endpoint is None else describe(service.ws_address)
        backends = (f"{config.tcp_interface or '*'}:{ports[1]}" if config.tcp_endpoint is None
                    else describe(service.tcp_address))
        print(f"PyStrands broker: WebSocket on {websocket} (/ws/...), backends on {backends}", flush=True)
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    reactor.callWhenRunning(service.startService)
    service.when_listening().addCallbacks(listening, stop_with)
    reactor.run()
    return exit_code


def print_worker_output(output: WorkerOutput) -> None:
    """The CLI's relay of its workers' lines: stdout to our stdout; the log to our stderr, each line after
    ``[worker N pid P]``."""
    if output.stream == "stdout":
        print(output.text, flush=True)
        return
    for line in output.text.split("\n"):
        print(f"[worker {output.number} pid {output.pid}] {line}", file=sys.stderr, flush=True)


WORKER_USAGE = "usage: python -m pystrands worker SUPERVISOR_PID [pystrands server options]"


def worker(args: list[str]) -> int:
    """``python -m pystrands worker SUPERVISOR_PID [server options]``: one worker of a ``--workers`` supervisor."""
    from .broker.workers import SupervisorGone, run_worker
    from .settings import check_integer

    if not args or not args[0].lstrip("-").isdigit():
        print(WORKER_USAGE, file=sys.stderr)
        return 2
    try:
        supervisor = check_integer("the supervisor's pid", int(args[0]), minimum=1)
    except ValueError as exc:
        print(f"pystrands worker: {exc}", file=sys.stderr)
        return 2
    try:
        return run_worker(supervisor, args[1:])
    except SupervisorGone as exc:
        print(f"pystrands worker: {exc}", file=sys.stderr)
        return 1


COMMANDS: dict[str, Callable[[list[str]], int]] = {"server": server, "worker": worker}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; unknown or missing commands are a usage error."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] == "--version":
        from ._install import version_line

        print(version_line())
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"pystrands: unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
