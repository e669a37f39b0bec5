"""twistd plugins of PyStrands. Kept tiny: the real code loads only when used."""

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

pystrands_backend = ServiceMaker(
    "PyStrands backend",
    "pystrands.tap",
    "Run a PyStrands backend (module.attr) connected to a broker",
    "pystrands",
)

pystrands_broker = ServiceMaker(
    "PyStrands broker",
    "pystrands.broker.tap",
    "Run the embedded PyStrands broker (WebSocket clients <-> backends)",
    "pystrands-broker",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """``pystrands-reuseport:PORT[:interface=ADDR]``: a TCP port shared through SO_REUSEPORT (``--workers``)."""

    prefix = "pystrands-reuseport"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> IStreamServerEndpoint:
        """The endpoint, made by :func:`pystrands.broker.reuseport.parse_reuseport`."""
        from pystrands.broker.reuseport import parse_reuseport

        return parse_reuseport(reactor, *args, **kwargs)


pystrands_reuseport = ReusePortParser()
