"""``twistd pystrands-broker``: the embedded broker under twistd, with the CLI's options.

    twistd -n pystrands-broker --ws-port 8080 --tcp-port 8081
"""

from __future__ import annotations

import socket

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from . import config
from .service import BrokerService, fit_file_limit

__all__ = ["Options", "makeService"]

log = Logger()


class Options(config.Options):
    """The CLI's options, plus a check that the ports are free.

    twistd has no way for a service to end it with a failing exit status, so
    a taken port is found here, while parsing, where a usage error exits 1.
    Listening later still reports a port lost in between.
    """

    def postOptions(self) -> None:
        """Parse as the command line does, then check that the ports are free."""
        super().postOptions()
        broker = self["config"]
        for option, port, interface, endpoint in (
                ("--ws-port", broker.ws_port, broker.ws_interface, broker.ws_endpoint),
                ("--tcp-port", broker.tcp_port, broker.tcp_interface, broker.tcp_endpoint)):
            if port and endpoint is None:
                _check_free(option, port, interface)


def _check_free(option: str, port: int, interface: str) -> None:
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted listens
        try:
            probe.bind((interface, port))
        except OSError as exc:
            raise usage.UsageError(f"{option} {port}: cannot listen: {exc.strerror}") from None


def makeService(options: Options) -> IService:
    """What ``twistd pystrands-broker`` runs (a BrokerService, or with ``--workers`` their supervisor).

    It stops twistd if a port is taken or the workers keep failing. The
    workers' log events go to twistd's log (the supervisor's default relay).
    """
    fit_file_limit(options["config"])
    if options["config"].workers > 1:
        from .workers import WorkerSupervisor, listening_line, worker_arguments

        supervisor = WorkerSupervisor(options["config"], worker_arguments(options))
        supervisor.ready.addCallback(lambda ports: log.info("{line}", line=listening_line(options["config"], ports)))
        supervisor.failed.addErrback(_cannot_listen)
        return supervisor
    service = BrokerService(options["config"])
    service.when_listening().addErrback(_cannot_listen)
    return service


def _cannot_listen(failure: Failure) -> None:
    from twisted.internet import reactor  # twistd's reactor: this is the outermost layer

    log.critical("PyStrands broker cannot listen: {why}", why=failure.getErrorMessage())
    reactor.callWhenRunning(reactor.stop)  # twistd may start services before the reactor runs
