"""``twistd pystrands``: run a backend object against a broker::

    twistd -n pystrands --backend mymodule.MyBackend --broker tcp:host=localhost:port=8081

``--backend`` names ``module.attr`` (or ``module:attr``): a class is
instantiated with no arguments, anything else is used as it is; either way
it must be a backend (adaptable to IBackend). A face object keeps the broker
and settings it was built with, except where an option is given.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from ._parameters import ConnectionParameters
from .logbridge import leave_unhandled_to_twisted
from .options import PackageOptions, parse_number, parse_numbers, settings_error
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
}


def _built_with(backend: object, spec: str) -> tuple[str | None, dict[str, Any]]:
    """Where a face object's broker is (an endpoint string), and the settings it was given.

    A face (PyStrandsClient, AsyncPyStrandsClient, PyStrands) counts its host
    and port, its documented parameters and the settings keywords it was
    built with, not its own default concurrency (twistd's holds). Any other
    backend says nothing: ``(None, {})``.
    """
    if not isinstance(backend, ConnectionParameters):
        return None, {}
    try:
        return backend.broker_endpoint, backend.chosen_settings()
    except (TypeError, ValueError) as exc:
        raise usage.UsageError(f"--backend {spec!r}: {exc}") from None


#: The defaults shown in --help (``usage.Options`` keeps its own ``defaults`` dict).
_DEFAULTS = BackendSettings()


def _setting(option: str, doc: str) -> list[Any]:
    """The row of a connection setting: no default (None: not given, so the backend object's or the default holds)."""
    default = getattr(_DEFAULTS, option.replace("-", "_"))
    return [option, None, None, f"{doc} [default: {default}, or the backend object's]"]


class Options(PackageOptions):
    """Command-line options of ``twistd pystrands``.

    An option given wins; one not given takes what a face object given as
    ``--backend`` was built with (its host and port for ``--broker``), else
    the default.
    """

    synopsis = "--backend module.attr [options]"

    optParameters: ClassVar[list[list[Any]]] = [
        ["backend", "b", None, "The backend: module.attr of a class (made with no arguments) or object."],
        ["broker", None, None, ("Client endpoint string of the broker's backend port."
                                f" [default: {DEFAULT_BROKER}, or the backend object's host and port]")],
        _setting("reconnect-delay", "Seconds before the first reconnection attempt."),
        _setting("max-reconnect-delay", "Cap on the reconnection delay."),
        _setting("reconnect-backoff", "Growth factor of the delay (>= 1)."),
        _setting("concurrency", "Clients whose handlers may run at once."),
        _setting("max-line-length", "Longest accepted frame, in bytes."),
        _setting("idle-timeout", "Seconds of broker silence before reconnecting (0: never)."),
        _setting("send-buffer-size", "Sends kept while reconnecting."),
        _setting("backend-token", "Token for a broker started with --backend-token."),
        ["stop-timeout", None, 5.0, "Seconds to let handlers finish on shutdown (the close then gets 1 s more)."],
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        ["no-reconnect", None, "Make one connection attempt; do not reconnect (whatever the backend object says)."],
    ]

    def postOptions(self) -> None:
        """Check the options given, load ``--backend``, and merge both into :class:`BackendSettings`."""
        spec = self["backend"]
        if not spec:
            raise usage.UsageError("--backend is required (module.attr of your backend)")
        if self["broker"] is not None:
            try:
                clientFromString(None, self["broker"])
            except (ValueError, TypeError, KeyError) as exc:
                raise usage.UsageError(f"--broker {self['broker']!r} is not a client endpoint string: {exc}") from None
        given = {option: kind for option, kind in _NUMERIC_OPTIONS.items() if self[option] is not None}
        flags = parse_numbers(self, given, lambda option: f"--{option}")
        if self["no-reconnect"]:
            flags["auto_reconnect"] = False
        if self["backend-token"] is not None:
            flags["backend_token"] = self["backend-token"]
        stop_timeout = parse_number("--stop-timeout", self["stop-timeout"], float)
        try:
            BackendSettings(**flags)  # the options alone first: an error names the option
            self["stop-timeout"] = check_number("stop_timeout", stop_timeout, minimum=0)
        except (TypeError, ValueError) as exc:
            raise settings_error(exc, lambda option: f"--{option}") from None
        backend = self["backend_object"] = load_backend(spec)
        broker, own = _built_with(backend, spec)
        try:
            self["settings"] = BackendSettings(**{**own, **flags})
        except (TypeError, ValueError) as exc:
            raise usage.UsageError(f"--backend {spec!r} with the options given: {exc}") from None
        if self["broker"] is None:
            self["broker"] = broker or DEFAULT_BROKER


def makeService(options: Options) -> IService:
    """The BackendService that ``twistd pystrands`` runs; twistd's log takes the events stdlib logging does not."""
    leave_unhandled_to_twisted()
    settings: BackendSettings = options["settings"]
    return BackendService(
        options["backend_object"],
        options["broker"],
        stop_timeout=options["stop-timeout"],
        **{name: getattr(settings, name) for name in BackendSettings.names()},
    )
