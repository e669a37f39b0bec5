"""The documented constructor every face shares: its parameters, their checks, and the settings they make."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import quoteStringArgument

from .settings import BackendSettings, check_port

__all__ = ["ConnectionParameters"]

#: Settings with their own constructor parameter (the documented ones).
_DOCUMENTED = ("auto_reconnect", "reconnect_delay", "max_reconnect_delay", "reconnect_backoff")


class ConnectionParameters:
    """Where the broker is and how to stay connected to it, as the faces' constructor takes them.

    Beyond the documented parameters, any :class:`~pystrands.settings.BackendSettings`
    field is accepted as a keyword; an unknown one is a TypeError, as for any function.
    """

    #: Handlers of different WebSocket clients that may run at once, unless ``concurrency`` is given.
    _default_concurrency: int = BackendSettings.concurrency

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8081,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_backoff: float = 2.0,
        **settings: Any,
    ) -> None:
        unknown = sorted(set(settings) - (BackendSettings.names() - set(_DOCUMENTED)))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
        #: Host name or IP address of the broker's backend port.
        self.host = host
        #: The broker's backend port.
        self.port = port
        #: Reconnect after a lost or failed connection.
        self.auto_reconnect = auto_reconnect
        #: Seconds before the first reconnection attempt.
        self.reconnect_delay = reconnect_delay
        #: Cap on the delay between attempts, in seconds.
        self.max_reconnect_delay = max_reconnect_delay
        #: Factor by which the delay grows after each failed attempt.
        self.reconnect_backoff = reconnect_backoff
        self._settings_overrides = dict(settings)
        self._settings()
        self._init_state()

    def _init_state(self) -> None:
        """Set up a face's own state; each face overrides this rather than the constructor."""

    def chosen_settings(self) -> dict[str, Any]:
        """The settings this object was given, checked: its documented parameters and the keywords it was
        built with, not the face's own default ``concurrency`` (for a host that runs it, as ``twistd
        pystrands``, which then fills in its own defaults). TypeError/ValueError for a nonsense value."""
        settings = self._settings()  # its attributes may have changed since it was built
        return {name: getattr(settings, name) for name in (*_DOCUMENTED, *self._settings_overrides)}

    @property
    def broker_endpoint(self) -> str:
        """The broker's backend port as a client endpoint string (an IPv6 host quoted)."""
        return f"tcp:host={quoteStringArgument(self.host)}:port={self.port}"

    def _settings(self) -> BackendSettings:
        """The validated settings from the current attributes (they may be changed until connect)."""
        if not isinstance(self.host, str):
            raise TypeError(f"host must be a str, not {type(self.host).__name__}")
        if not self.host:
            raise ValueError("host must not be empty")
        check_port("port", self.port)
        options = {"concurrency": self._default_concurrency, **self._settings_overrides}
        options.update((name, getattr(self, name)) for name in _DOCUMENTED)
        return BackendSettings(**options)
