"""``twistd pystrands``: run a backend object against a broker::

    twistd -n pystrands --backend mymodule.MyBackend --broker tcp:host=localhost:port=8081

``--backend`` names ``module.attr`` (or ``module:attr``): a class is
instantiated with no arguments, anything else is used as it is; either way
it must be a backend (adaptable to IBackend).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from .options import PackageOptions, parse_numbers, settings_error
from .protocol import as_backend
from .service import DEFAULT_BROKER, BackendService
from .settings import BackendSettings, check_number

__all__ = ["Options", "load_backend", "makeService"]


def load_backend(spec: str) -> object:
    """Import ``module.attr`` (or ``module:attr``) and make it a backend object.

    Raises ``usage.UsageError`` with a one-line reason for every way it can
    go wrong: bad form, module not importable, no such attribute, not a backend.
    """
    module_name, sep, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not module_name or not attr:
        raise usage.UsageError(f"--backend {spec!r}: expected module.attr, e.g. mybackend.Backend")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current directory's modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise usage.UsageError(f"--backend {spec!r}: cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise usage.UsageError(
            f"--backend {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise usage.UsageError(f"--backend {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise usage.UsageError(
                f"--backend {spec!r}: {attr}() failed: {type(exc).__name__}: {exc}"
            ) from None
    try:
        as_backend(obj)
    except TypeError as exc:
        raise usage.UsageError(f"--backend {spec!r}: {exc}") from None
    return obj


_NUMERIC_OPTIONS = {
    "reconnect-delay": float,
    "max-reconnect-delay": float,
    "reconnect-backoff": float,
    "concurrency": int,
    "max-line-length": int,
    "idle-timeout": float,
    "send-buffer-size": int,
    "stop-timeout": float,
}


#: The defaults shown in --help (``usage.Options`` keeps its own ``defaults`` dict).
_DEFAULTS = BackendSettings()


class Options(PackageOptions):
    """Command-line options of ``twistd pystrands``."""

    synopsis = "--backend module.attr [options]"

    optParameters: ClassVar[list[list[Any]]] = [
        ["backend", "b", None, "The backend: module.attr of a class (made with no arguments) or object."],
        ["broker", None, DEFAULT_BROKER, "Client endpoint string of the broker's backend port."],
        ["reconnect-delay", None, _DEFAULTS.reconnect_delay, "Seconds before the first reconnection attempt."],
        ["max-reconnect-delay", None, _DEFAULTS.max_reconnect_delay, "Cap on the reconnection delay."],
        ["reconnect-backoff", None, _DEFAULTS.reconnect_backoff, "Growth factor of the delay (>= 1)."],
        ["concurrency", None, _DEFAULTS.concurrency, "Clients whose handlers may run at once."],
        ["max-line-length", None, _DEFAULTS.max_line_length, "Longest accepted frame, in bytes."],
        ["idle-timeout", None, _DEFAULTS.idle_timeout, "Seconds of broker silence before reconnecting (0: never)."],
        ["send-buffer-size", None, _DEFAULTS.send_buffer_size, "Sends kept while reconnecting."],
        ["backend-token", None, None, "Token for a broker started with --backend-token."],
        ["stop-timeout", None, 5.0, "Seconds to let handlers finish on shutdown (the close then gets 1 s more)."],
    ]
    optFlags: ClassVar[list[list[Any]]] = [["no-reconnect", None, "Make one connection attempt; do not reconnect."]]

    def postOptions(self) -> None:
        """Check ``--broker``, parse the numbers into :class:`BackendSettings`, and load ``--backend``."""
        if not self["backend"]:
            raise usage.UsageError("--backend is required (module.attr of your backend)")
        try:
            clientFromString(None, self["broker"])
        except (ValueError, TypeError, KeyError) as exc:
            raise usage.UsageError(f"--broker {self['broker']!r} is not a client endpoint string: {exc}") from None
        values = parse_numbers(self, _NUMERIC_OPTIONS, lambda option: f"--{option}")
        stop_timeout = values.pop("stop_timeout")
        try:
            self["settings"] = BackendSettings(
                auto_reconnect=not self["no-reconnect"], backend_token=self["backend-token"], **values
            )
            self["stop-timeout"] = check_number("stop_timeout", stop_timeout, minimum=0)
        except (TypeError, ValueError) as exc:
            raise settings_error(exc, lambda option: f"--{option}") from None
        self["backend_object"] = load_backend(self["backend"])


def makeService(options: Options) -> IService:
    """The BackendService that ``twistd pystrands`` runs."""
    settings: BackendSettings = options["settings"]
    return BackendService(
        options["backend_object"],
        options["broker"],
        stop_timeout=options["stop-timeout"],
        **{name: getattr(settings, name) for name in BackendSettings.names()},
    )
