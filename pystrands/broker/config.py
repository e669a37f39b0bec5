"""The broker's settings: one validated dataclass, and the command-line options that fill it.

The same :class:`Options` serve ``python -m pystrands server`` and
``twistd pystrands-broker``. As with the reference broker, the environment
variables ``PYSTRAND_WS_PORT``, ``PYSTRAND_TCP_PORT``,
``PYSTRAND_QUEUE_SIZE`` and ``PYSTRAND_REDIS_URL`` take precedence over the flags.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.python import usage

from ..options import PackageOptions, parse_numbers, settings_error
from ..settings import BackendSettings, check_integer, check_number, check_token
from .guards import OriginPolicy
from .redis_url import check_cluster_name, parse_redis_url

__all__ = ["ENVIRONMENT", "MAX_MESSAGE_SIZE", "REDIS_URL_VARIABLE", "BrokerConfig", "Options", "check_server_endpoint",
           "parse_origins"]

#: The environment variable of the Redis URL (a password there stays out of the process list).
REDIS_URL_VARIABLE = "PYSTRAND_REDIS_URL"
#: Environment variable -> option it overrides.
ENVIRONMENT = {
    "PYSTRAND_WS_PORT": "ws-port",
    "PYSTRAND_TCP_PORT": "tcp-port",
    "PYSTRAND_QUEUE_SIZE": "queue-size",
    REDIS_URL_VARIABLE: "redis",
}

MiB = 1024 * 1024
#: Room a ``new_message`` event needs around its message (context, keys); generous on purpose.
EVENT_ENVELOPE = 64 * 1024
#: The largest ``max_message_size``: its event must fit the backend library's default line limit.
MAX_MESSAGE_SIZE = BackendSettings.max_line_length - EVENT_ENVELOPE
#: The range of ``cluster_heartbeat``, in seconds.
MIN_HEARTBEAT, MAX_HEARTBEAT = 0.5, 300.0
#: The most ``workers``: a typo should not start thousands of processes.
MAX_WORKERS = 256


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the broker can be told; a nonsense value raises at construction.

    Every limit a client can run into is here, with its default; see
    ``docs/SECURITY.md`` for what happens when each is hit.
    """

    #: WebSocket port (0: any free port).
    ws_port: int = 8080
    #: Interface of the WebSocket port ("": all).
    ws_interface: str = ""
    #: Backend TCP port (0: any free port).
    tcp_port: int = 8081
    #: Interface of the backend port; loopback only unless opened on purpose.
    tcp_interface: str = "127.0.0.1"
    #: Server endpoint string of the WebSocket side (e.g. ``ssl:8443:privateKey=k.pem``);
    #: when set, it replaces ``ws_port`` and ``ws_interface``.
    ws_endpoint: str | None = None
    #: Server endpoint string of the backend side; when set, it replaces ``tcp_port`` and ``tcp_interface``.
    tcp_endpoint: str | None = None
    #: Events kept while no backend is connected (0: none).
    queue_size: int = 1000
    #: Seconds a connection_request may wait for its response before HTTP 403.
    auth_timeout: float = 10.0
    #: Largest WebSocket message in bytes; a bigger one closes the client with 1009.
    max_message_size: int = 1 * MiB
    #: Frames one WebSocket message may be split into; more closes the client with 1009.
    max_fragments: int = 1024
    #: Open sockets on the WebSocket port (clients, handshakes, HTTP) beyond which new ones get HTTP 503.
    max_clients: int = 10_000
    #: Open sockets from one IP address beyond which new ones get HTTP 429 (0: no limit).
    max_clients_per_address: int = 0
    #: Seconds a new socket has to send a complete request head (else HTTP 408);
    #: also the time a client has to answer a close frame.
    handshake_timeout: float = 10.0
    #: Origins allowed to open WebSockets: patterns such as ``https://*.example.com``, ``*`` for
    #: any, ``null`` for sandboxed pages. None: only the page's own origin (``Origin`` host and
    #: port equal to ``Host``); a handshake without ``Origin`` (not a browser) is always allowed.
    allowed_origins: tuple[str, ...] | None = None
    #: Seconds between pings to each WebSocket client (0: none).
    ping_interval: float = 25.0
    #: Seconds a WebSocket client may send nothing (a pong counts) before it is closed with 1001 (0: never).
    client_idle_timeout: float = 60.0
    #: Seconds a WebSocket client's socket may stay unwritable before the client is dropped.
    client_write_timeout: float = 10.0
    #: Messages per second one WebSocket client may send; past it the broker stops reading
    #: from that client for a while (0: no limit).
    max_client_rate: float = 0.0
    #: When set, a backend's first frame must be ``auth`` with this token.
    backend_token: str | None = None
    #: A directory served at ``/`` beside ``/ws/``.
    static: str | None = None
    #: Seconds between heartbeats to each backend.
    heartbeat_interval: float = 15.0
    #: Seconds a backend's socket may stay unwritable (no progress at all) before it is dropped.
    write_timeout: float = 5.0
    #: Longest line accepted from a backend, in bytes; longer lines are skipped.
    max_frame_size: int = 16 * MiB
    #: Bytes queued to an unwritable WebSocket client before it is dropped.
    max_client_buffer: int = 8 * MiB
    #: Bytes queued to an unwritable backend before it is dropped. The broker stops reading from a
    #: backend's clients long before this, so it is only the last line of defence.
    max_backend_buffer: int = 64 * MiB
    #: Serve Prometheus metrics at ``/metrics`` on the WebSocket port (see ``metrics_endpoint``).
    metrics: bool = False
    #: Server endpoint string of a listener of its own for ``/metrics`` (e.g.
    #: ``tcp:9100:interface=127.0.0.1``); when set, metrics are served there and not on the WebSocket port.
    metrics_endpoint: str | None = None
    #: Broker processes on this machine sharing both ports through ``SO_REUSEPORT`` (Linux only);
    #: more than one needs a cluster to join (see :mod:`pystrands.broker.workers`).
    workers: int = 1
    #: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS): this broker is then one
    #: node of the cluster that this Redis and ``cluster_name`` name (see docs/CLUSTER.md). Left out of the
    #: repr: it may carry a password.
    redis: str | None = field(default=None, repr=False)
    #: The cluster's name: several clusters may share one Redis.
    cluster_name: str = "pystrands"
    #: Seconds between a node's heartbeats in Redis; the others forget a killed node within 2 of them.
    cluster_heartbeat: float = 5.0

    def __post_init__(self) -> None:
        check_integer("ws_port", self.ws_port, minimum=0, maximum=65535)
        check_integer("tcp_port", self.tcp_port, minimum=0, maximum=65535)
        check_integer("queue_size", self.queue_size, minimum=0)
        check_integer("max_message_size", self.max_message_size, minimum=1)
        if self.max_message_size > MAX_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be <= {MAX_MESSAGE_SIZE}, not {self.max_message_size}:"
                             " each message reaches a backend as one line, and the backend library"
                             f" skips lines over {BackendSettings.max_line_length} bytes")
        check_integer("max_fragments", self.max_fragments, minimum=1)
        check_integer("max_clients", self.max_clients, minimum=1)
        check_integer("max_clients_per_address", self.max_clients_per_address, minimum=0)
        check_integer("max_frame_size", self.max_frame_size, minimum=64)
        check_integer("max_client_buffer", self.max_client_buffer, minimum=1)
        check_integer("max_backend_buffer", self.max_backend_buffer, minimum=1)
        for name in ("auth_timeout", "heartbeat_interval", "write_timeout", "handshake_timeout",
                     "client_write_timeout"):
            check_number(name, getattr(self, name), minimum=0, inclusive=False)
        for name in ("ping_interval", "client_idle_timeout", "max_client_rate"):
            check_number(name, getattr(self, name), minimum=0)
        for name in ("ws_interface", "tcp_interface"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, not {type(getattr(self, name)).__name__}")
        if not isinstance(self.metrics, bool):
            raise TypeError(f"metrics must be a bool, not {type(self.metrics).__name__}")
        for name in ("ws_endpoint", "tcp_endpoint", "metrics_endpoint"):
            value = getattr(self, name)
            if value is not None:
                check_server_endpoint(name, value)
        if self.allowed_origins is not None:
            if isinstance(self.allowed_origins, (str, bytes)) or not hasattr(self.allowed_origins, "__iter__"):
                raise TypeError("allowed_origins must be a sequence of origin patterns or None,"
                                f" not {type(self.allowed_origins).__name__}")
            object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
            OriginPolicy(self.allowed_origins)  # raises on a malformed pattern
        check_token("backend_token", self.backend_token)
        if self.static is not None and not os.path.isdir(self.static):
            raise ValueError(f"static {self.static!r} is not a directory")
        if self.redis is not None:
            parse_redis_url(self.redis)
        check_cluster_name(self.cluster_name)
        check_number("cluster_heartbeat", self.cluster_heartbeat, minimum=0, inclusive=False)
        if not MIN_HEARTBEAT <= self.cluster_heartbeat <= MAX_HEARTBEAT:
            raise ValueError(f"cluster_heartbeat must be {MIN_HEARTBEAT:g}-{MAX_HEARTBEAT:g} seconds, not"
                             f" {self.cluster_heartbeat:g}: a node is forgotten after 1.5 heartbeats of silence,"
                             " so a shorter one splits the cluster at every pause, a longer one keeps a dead node")
        if (self.ws_port and self.ws_port == self.tcp_port and self.ws_endpoint is None and self.tcp_endpoint is None
                and _overlap(self.ws_interface, self.tcp_interface)):
            raise ValueError(f"ws_port must not be the backend port too ({self.ws_port}): WebSocket clients and"
                             " backends need a port each")
        check_integer("workers", self.workers, minimum=1, maximum=MAX_WORKERS)
        if self.workers > 1:
            self._check_workers()

    def _check_workers(self) -> None:
        """Several workers listen on plain ports of their own, shared through SO_REUSEPORT."""
        if not sys.platform.startswith("linux"):
            raise ValueError(f"workers must be 1 on {sys.platform}: several workers share the ports"
                             " through SO_REUSEPORT's load balancing, which only Linux has")
        if self.redis is None:
            raise ValueError(f"workers above 1 needs a Redis URL (--redis, PYSTRAND_REDIS_URL): the {self.workers}"
                             " workers are nodes of one cluster, which meets in Redis")
        for name in ("ws_endpoint", "tcp_endpoint", "metrics_endpoint"):
            if getattr(self, name) is not None:
                raise ValueError(f"workers must be 1 with --{name.replace('_', '-')}: workers share plain"
                                 " ports (--ws-port, --tcp-port); a metrics listener would be one port per worker")

    @property
    def ws_listen(self) -> str:
        """Server endpoint string of the WebSocket side."""
        return self.ws_endpoint or _endpoint(self.ws_port, self.ws_interface)

    @property
    def tcp_listen(self) -> str:
        """Server endpoint string of the backend side."""
        return self.tcp_endpoint or _endpoint(self.tcp_port, self.tcp_interface)


def _overlap(first: str, second: str) -> bool:
    """True if two listening interfaces can take the same connections (one of them is every interface)."""
    everywhere = ("", "0.0.0.0", "::")
    return first == second or first in everywhere or second in everywhere


def _endpoint(port: int, interface: str) -> str:
    if not interface:
        return f"tcp:{port}"
    return f"tcp:{port}:interface={quoteStringArgument(interface)}"


def check_server_endpoint(name: str, description: Any) -> str:
    """A server endpoint string Twisted can parse (the listening itself happens at start)."""
    if not isinstance(description, str) or not description:
        raise TypeError(f"{name} must be a non-empty endpoint string, not {description!r}")
    from twisted.internet.testing import MemoryReactor  # parses without touching the global reactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as exc:  # Twisted raises ValueError, KeyError, ImportError, ... per plugin
        raise ValueError(f"{name} {description!r} is not a usable server endpoint: {exc}") from None
    return description


_NUMERIC_OPTIONS = {
    "ws-port": int,
    "tcp-port": int,
    "queue-size": int,
    "max-message-size": int,
    "max-fragments": int,
    "max-clients": int,
    "max-clients-per-address": int,
    "auth-timeout": float,
    "handshake-timeout": float,
    "ping-interval": float,
    "client-idle-timeout": float,
    "client-write-timeout": float,
    "max-client-buffer": int,
    "write-timeout": float,
    "max-client-rate": float,
    "cluster-heartbeat": float,
    "workers": int,
}


#: The defaults shown in --help (``usage.Options`` keeps its own ``defaults`` dict).
_DEFAULTS = BrokerConfig()


class Options(PackageOptions):
    """Command-line options of the broker (``python -m pystrands server``, ``twistd pystrands-broker``)."""

    synopsis = "[options]"
    #: The text after the options in ``--help`` (the command line sets its own; empty: twistd's).
    longdesc = ""

    optParameters: ClassVar[list[list[Any]]] = [
        ["ws-port", None, _DEFAULTS.ws_port, "WebSocket port (env PYSTRAND_WS_PORT wins)."],
        ["tcp-port", None, _DEFAULTS.tcp_port, "Backend TCP port (env PYSTRAND_TCP_PORT wins)."],
        ["queue-size", None, _DEFAULTS.queue_size,
         "Events kept while no backend is connected; 0 disables (env PYSTRAND_QUEUE_SIZE wins)."],
        ["tcp-interface", None, _DEFAULTS.tcp_interface,
         "Interface of the backend port; 0.0.0.0 opens it to the network."],
        ["ws-interface", None, None, "Interface of the WebSocket port (default: all)."],
        ["auth-timeout", None, _DEFAULTS.auth_timeout,
         "Seconds to wait for a backend's answer to a handshake before HTTP 403."],
        ["max-message-size", None, _DEFAULTS.max_message_size,
         "Largest WebSocket message in bytes (bigger: close code 1009)."],
        ["max-fragments", None, _DEFAULTS.max_fragments,
         "Most frames in one WebSocket message (more: close code 1009)."],
        ["max-clients", None, _DEFAULTS.max_clients,
         "Most open sockets on the WebSocket port, handshakes included (beyond: HTTP 503)."],
        ["max-clients-per-address", None, _DEFAULTS.max_clients_per_address,
         "Most open sockets from one IP address (beyond: HTTP 429); 0: no limit."],
        ["handshake-timeout", None, _DEFAULTS.handshake_timeout,
         "Seconds a socket has to send its request head (else HTTP 408) or to answer a close."],
        ["allowed-origins", None, None,
         ("Comma-separated origins allowed to connect (https://*.example.com, * for any, null)."
          " Default: the page's own origin, and clients that send no Origin.")],
        ["ping-interval", None, _DEFAULTS.ping_interval, "Seconds between pings to WebSocket clients; 0: none."],
        ["client-idle-timeout", None, _DEFAULTS.client_idle_timeout,
         "Seconds a WebSocket client may send nothing (pongs count) before close 1001; 0: never."],
        ["client-write-timeout", None, _DEFAULTS.client_write_timeout,
         "Seconds a WebSocket client's socket may stay unwritable before it is dropped."],
        ["max-client-buffer", None, _DEFAULTS.max_client_buffer,
         "Bytes that may wait for one WebSocket client's socket; past them it is dropped (a slow reader)."],
        ["write-timeout", None, _DEFAULTS.write_timeout,
         "Seconds a backend's socket may stay unwritable before the backend is dropped."],
        ["max-client-rate", None, _DEFAULTS.max_client_rate,
         "Messages per second per WebSocket client; faster clients are read more slowly. 0: no limit."],
        ["ws-endpoint", None, None,
         ("Twisted server endpoint of the WebSocket side (e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem);"
          " replaces --ws-port and --ws-interface.")],
        ["tcp-endpoint", None, None,
         ("Twisted server endpoint of the backend side (e.g. unix:/run/pystrands.sock);"
          " replaces --tcp-port and --tcp-interface.")],
        ["backend-token", None, None, "Backends must send this token in an auth frame first."],
        ["static", None, None, "Directory to serve at / beside /ws/."],
        ["metrics-endpoint", None, None,
         ("Twisted server endpoint of a listener of its own for /metrics (e.g. tcp:9100:interface=127.0.0.1);"
          " the WebSocket port then does not serve /metrics.")],
        ["redis", None, None,
         ("Join the cluster of this Redis: redis://[:password@]host:port/db, rediss:// for TLS"
          " (env PYSTRAND_REDIS_URL wins).")],
        ["cluster-name", None, _DEFAULTS.cluster_name, "Name of the cluster in that Redis (several may share one)."],
        ["cluster-heartbeat", None, _DEFAULTS.cluster_heartbeat,
         "Seconds between a node's heartbeats (0.5-300); the others forget a killed node within two."],
        ["workers", None, _DEFAULTS.workers,
         "Broker processes sharing both ports (SO_REUSEPORT, Linux); more than 1 needs a cluster (--redis)."],
    ]

    optFlags: ClassVar[list[list[Any]]] = [
        ["metrics", None, "Serve Prometheus metrics at /metrics on the WebSocket port (counts only; see SECURITY.md)."],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.environ = os.environ if environ is None else environ

    def parseArgs(self, *args: str) -> None:
        """Every setting is an option: a word left over is named in the error (a mistyped flag, a missing ``--``)."""
        if args:
            raise usage.UsageError(f"unexpected argument{'s' if len(args) > 1 else ''}: {' '.join(args)}")

    def postOptions(self) -> None:
        """Apply the environment variables, then build and check ``self["config"]``, a :class:`BrokerConfig`."""
        for variable, option in ENVIRONMENT.items():
            if self.environ.get(variable, "") != "":
                self[option] = self.environ[variable]
        label = lambda option: _source(option, self.environ)  # noqa: E731  # a one-line helper, used twice
        try:
            self["config"] = BrokerConfig(
                **parse_numbers(self, _NUMERIC_OPTIONS, label),
                tcp_interface=self["tcp-interface"],
                ws_interface=self["ws-interface"] or "",
                backend_token=self["backend-token"],
                static=self["static"],
                ws_endpoint=self["ws-endpoint"],
                tcp_endpoint=self["tcp-endpoint"],
                metrics=bool(self["metrics"]),
                metrics_endpoint=self["metrics-endpoint"],
                allowed_origins=parse_origins(self["allowed-origins"]),
                redis=self["redis"],
                cluster_name=self["cluster-name"],
            )
        except (TypeError, ValueError) as exc:
            raise settings_error(exc, label) from None


def parse_origins(value: str | None) -> tuple[str, ...] | None:
    """``--allowed-origins a,b`` as a tuple of patterns (None when the flag is not given)."""
    if value is None:
        return None
    return tuple(pattern.strip() for pattern in value.split(","))


def _source(option: str, environ: Mapping[str, str]) -> str:
    """How to name an option in an error: its environment variable when that set it."""
    for variable, name in ENVIRONMENT.items():
        if name == option and environ.get(variable, "") != "":
            return variable
    return f"--{option}"

