"""The embedded broker: wire-compatible with the reference Go broker, built on Twisted.

Run it with ``python -m pystrands server``, ``twistd pystrands-broker``, or
add a :class:`BrokerService` to a Twisted application.
"""

from .config import BrokerConfig
from .service import BrokerService

__all__ = ["BrokerConfig", "BrokerService"]
