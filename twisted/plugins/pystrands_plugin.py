"""twistd plugins of PyStrands. Kept tiny: the real code loads only when used."""

from twisted.application.service import ServiceMaker

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
