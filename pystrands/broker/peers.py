"""The other nodes of a cluster, as their heartbeats tell: which are alive, and how many backends each has.

No I/O: the cluster feeds it heartbeats and asks it which nodes fell
silent. Tested with a ``Clock``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

__all__ = ["Peers"]


class Peers:
    """Nodes heard within the last ``silence`` seconds, each with its count of backends."""

    def __init__(self, clock: IReactorTime, silence: float) -> None:
        self.clock = clock
        self.silence = silence
        self._backends: dict[str, int] = {}
        self._deadlines: dict[str, float] = {}
        self._unconfirmed: set[str] = set()
        #: Nodes doubted (see :meth:`doubt`): node -> when.
        self._doubted: dict[str, float] = {}

    def __contains__(self, node: object) -> bool:
        return node in self._backends

    def __len__(self) -> int:
        return len(self._backends)

    def heard(self, node: str, backends: int, answer: bool = False) -> int | None:
        """A heartbeat from ``node`` (``answer``: the one it sends once back on Redis): its backends before
        (None if it was not known). It confirms the node, unless the node is doubted: then only its answer
        beat does, or a beat heard half a heartbeat (a third of ``silence``) after the doubt (one heard
        sooner may have been sent before the node went deaf, or its answer beat came before the doubt)."""
        before = self._backends.get(node)
        now = self.clock.seconds()
        self._backends[node] = backends
        self._deadlines[node] = now + self.silence
        doubted = self._doubted.get(node)
        if answer or doubted is None or now - doubted >= self.silence / 3:
            self._doubted.pop(node, None)
            self._unconfirmed.discard(node)
        return before

    def forget(self, node: str) -> bool:
        """Forget ``node`` (it said goodbye); False if it was not known."""
        self._deadlines.pop(node, None)
        self._unconfirmed.discard(node)
        self._doubted.pop(node, None)
        return self._backends.pop(node, None) is not None

    def silent(self) -> list[str]:
        """Forget the nodes not heard for ``silence`` seconds, and name them."""
        now = self.clock.seconds()
        gone = [node for node, deadline in self._deadlines.items() if deadline <= now]
        for node in gone:
            self.forget(node)
        return gone

    def extend(self, seconds: float) -> None:
        """Give every node ``seconds`` more: this node could not listen that long (its loop stalled)."""
        for node in self._deadlines:
            self._deadlines[node] += seconds

    def respite(self) -> None:
        """After this node could not hear anyone: every node gets ``silence`` seconds from now, and is
        unconfirmed until it beats again (until then it may not be listening yet)."""
        deadline = self.clock.seconds() + self.silence
        for node in self._deadlines:
            self._deadlines[node] = deadline
        self._unconfirmed.update(self._deadlines)

    def doubt(self, node: str) -> None:
        """``node`` got nothing of what was just sent to it (its connection to Redis broke): unconfirmed
        until it is back (see :meth:`heard`)."""
        if node in self._backends:
            self._unconfirmed.add(node)
            self._doubted[node] = self.clock.seconds()

    def unconfirmed(self, node: str) -> bool:
        """True for a node not heard since :meth:`respite`: it may come back as it was, or be forgotten."""
        return node in self._unconfirmed

    def backends(self, node: str) -> int:
        """The backends ``node`` has (0 if unknown)."""
        return self._backends.get(node, 0)

    def with_backends(self) -> list[str]:
        """The confirmed nodes that have a backend, in a stable order."""
        return sorted(node for node, count in self._backends.items() if count > 0 and node not in self._unconfirmed)
