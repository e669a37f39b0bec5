"""``--redis`` URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS.

Parsed and checked when the broker's settings are built, so that a typo
stops the broker at start with a clear message instead of a node that
never joins its cluster. No I/O and no Twisted here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_PORT", "PASSWORD_SHOWN", "RedisAddress", "check_cluster_name", "parse_redis_url",
           "password_on_command_line"]

DEFAULT_PORT = 6379
#: The warning of a process whose command line carries a Redis password (see :func:`password_on_command_line`).
PASSWORD_SHOWN = ("The Redis URL on the command line carries a password, which ps shows to every user of this"
                  " machine; give the URL in the environment variable PYSTRAND_REDIS_URL instead")
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class RedisAddress:
    """Where a node finds its Redis, and how it logs in."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = field(default=None, repr=False)  # never in a log line, a traceback or a repr
    username: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        """The URL without its password, for logs."""
        scheme = "rediss" if self.tls else "redis"
        login = f"{self.username or ''}:***@" if self.password is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{login}{host}:{self.port}/{self.db}"


def parse_redis_url(url: object) -> RedisAddress:
    """The address in a ``redis://`` or ``rediss://`` URL; ValueError (or TypeError) says what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"redis must be a redis:// or rediss:// URL, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"redis {_hide(url)!r} is malformed: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis {_hide(url)!r} must start with redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise ValueError(f"redis {_hide(url)!r} names no host")
    if parts.query or parts.fragment:
        raise ValueError(f"redis {_hide(url)!r} may not have a query or a fragment")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"redis {_hide(url)!r}: the database after the host must be a number, not {path!r}")
    db = int(path) if path else 0
    if db > 65535:
        raise ValueError(f"redis {_hide(url)!r}: database {db} is out of range")
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    if username is not None and password is None:
        raise ValueError(f"redis {_hide(url)!r} has a user name but no password (user:password@host)")
    return RedisAddress(host=parts.hostname, port=DEFAULT_PORT if port is None else port, db=db,
                        password=password, username=username, tls=parts.scheme == "rediss")


def check_cluster_name(name: object) -> str:
    """A cluster name: 1-64 letters, digits, ``_``, ``.`` or ``-`` (it prefixes Redis keys and channels)."""
    if not isinstance(name, str):
        raise TypeError(f"cluster_name must be a str, not {type(name).__name__}")
    if not _CLUSTER_NAME.fullmatch(name):
        raise ValueError(f"cluster_name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return name


def _hide(url: str) -> str:
    """The URL with any password masked, to quote in an error."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


def password_on_command_line(url: str, argv: Sequence[str]) -> bool:
    """True if the Redis ``url`` has a password and stands in ``argv`` (``--redis URL`` or ``--redis=URL``)."""
    return parse_redis_url(url).password is not None and any(url in argument for argument in argv)
