"""``twistd pystrands-broker``: the embedded broker under twistd, with the CLI's options.

    twistd -n pystrands-broker --ws-port 8080 --tcp-port 8081
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import Options
from .service import BrokerService

__all__ = ["Options", "makeService"]

log = Logger()


def makeService(options: Options) -> IService:
    """The BrokerService that ``twistd pystrands-broker`` runs; it stops twistd if a port is taken."""
    service = BrokerService(options["config"])
    service.when_listening().addErrback(_cannot_listen)
    return service


def _cannot_listen(failure: Failure) -> None:
    from twisted.internet import reactor  # twistd's reactor: this is the outermost layer

    log.critical("PyStrands broker cannot listen: {why}", why=failure.getErrorMessage())
    reactor.callWhenRunning(reactor.stop)  # twistd may start services before the reactor runs
