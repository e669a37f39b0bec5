"""Client ids claimed in Redis, so that one id is connected to one node of the cluster.

A node claims an id before the upgrade (``SET NX``: of two nodes, one gets
it), renews all its claims at each heartbeat (one script call per
:data:`BATCH` ids) and frees one when its client goes. The renewal and the
release are Lua scripts that check the owner in Redis: a node back from a
stall or an outage, whose claim expired and was taken by another node, must
neither take it back nor free it. The renewal makes a claim again when it is
gone (a Redis restarted without persistence), and names the ids that
another node holds, for the node to close its client of that id. The
scripts go through txredisapi's ``eval`` (EVALSHA once a connection has
sent a script): should an operator flush Redis' scripts, the EVAL that
follows the refused EVALSHA comes after the commands sent meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed

from .redis_link import Link

__all__ = ["BATCH", "RELEASE", "RENEW", "Claims"]

#: KEYS: claims; ARGV: the node, the expiry in ms. Each claim that is the node's, or that no one
#: holds, is the node's for the expiry; the claims another node holds are returned.
RENEW = b"""local taken = {}
for _, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if (not owner) or owner == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    taken[#taken + 1] = key
  end
end
return taken
"""

#: KEYS: one claim; ARGV: the node. Deleted if the node holds it (1), else left as it is (0).
RELEASE = b"""if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Claims renewed by one script call: Redis runs nothing else meanwhile, so each call stays short.
BATCH = 1000


class Claims:
    """The claims of one node: ``key(client_id)`` names a claim, which lives ``expiry`` ms unrenewed."""

    def __init__(self, link: Link, key: Callable[[str], bytes], node: str, expiry: int) -> None:
        self._link = link
        self._key = key
        self._node = node.encode()
        self._expiry = expiry

    def take(self, client_id: str) -> Deferred[Any] | None:
        """Claim ``client_id`` if no node holds it: b"OK", or None (Redis' answer) if one does; None
        (nothing sent) while Redis is unreachable."""
        return self._link.command(b"SET", self._key(client_id), self._node, b"NX", b"PX", self._expiry)

    def renew(self, client_ids: Iterable[str]) -> Deferred[list[str]]:
        """Renew (or make again) the claims of ``client_ids``: fires with those another node holds
        (none when Redis is unreachable or a call fails: the next heartbeat tries again)."""
        keys = {self._key(client_id): client_id for client_id in client_ids}
        ordered = list(keys)
        calls = [self._renew_batch(ordered[start:start + BATCH]) for start in range(0, len(ordered), BATCH)]
        if not calls:
            return succeed([])
        return gatherResults(calls).addCallback(
            lambda results: [keys[key] for taken in results for key in taken if key in keys])

    def _renew_batch(self, keys: list[bytes]) -> Deferred[list[bytes]]:
        ran = self._link.script(RENEW, keys, [self._node, self._expiry])
        if ran is None:
            return succeed([])
        return ran.addCallbacks(lambda taken: list(taken) if isinstance(taken, list) else [], lambda _: [])

    def release(self, client_id: str) -> Deferred[bool]:
        """Free the claim of ``client_id`` if it is this node's (another node may hold it by now):
        fires with True once freed (False if not this node's, or if Redis is unreachable or fails)."""
        ran = self._link.script(RELEASE, [self._key(client_id)], [self._node])
        if ran is None:
            return succeed(False)
        return ran.addCallbacks(lambda freed: freed == 1, lambda _: False)
