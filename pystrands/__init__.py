"""PyStrands on Twisted: Python backends for PyStrands real-time WebSocket brokers."""

#: This release of pystrands-twisted (setup.cfg reads it from here).
__version__ = "0.1.0"

from . import _install  # noqa: F401  first: refuses a pystrands/ folder shared with another distribution
from .app import PyStrands
from .async_client import AsyncPyStrandsClient
from .backend import Backend
from .client import PyStrandsClient
from .context import ConnectionRequestContext, Context, JSONModel
from .errors import BrokerRefused, NotConnectedError, NotSupportedError, ProtocolError, SendBufferFull
from .interfaces import IBackend, IBrokerConnection
from .service import BackendService

__all__ = [
    "AsyncPyStrandsClient",
    "Backend",
    "BackendService",
    "BrokerRefused",
    "ConnectionRequestContext",
    "Context",
    "IBackend",
    "IBrokerConnection",
    "JSONModel",
    "NotConnectedError",
    "NotSupportedError",
    "ProtocolError",
    "PyStrands",
    "PyStrandsClient",
    "SendBufferFull",
    "__version__",
]
