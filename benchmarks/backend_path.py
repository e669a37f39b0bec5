"""The Twisted-native backend's per-message path in-process: ``python benchmarks/backend_path.py``.

No sockets and no reactor: blocks of the simulator's ``new_message`` frames
(the reference broker's shape) go straight into a connected ``BrokerProtocol``
whose transport drops what it is given, and an echo backend answers each with
``send_private_message``, as in ``run.py throughput``. What is left of a
message's cost in the flood (the ``recv``/``send`` system calls and the
reactor) is the difference from that run's CPU per message.

Beside the whole path it times the parts that any implementation of the
documented API pays per message (decoding the frame's JSON, a ``Context``, a
``Deferred`` per send, encoding the reply), so that the floor under the path
is visible. The minimum of the rounds is reported: it is the figure least
moved by other work on the machine. Another tree's backend is measured with
``PYTHONPATH=DIR`` (DIR holding its ``pystrands/``, e.g. from ``git archive``).
"""

from __future__ import annotations

import argparse
import time
import timeit
from typing import Any

import broker_sim
import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from pystrands import Backend, wire
from pystrands.protocol import BrokerClientFactory, BrokerProtocol, context_from_wire

FRAMES_PER_BLOCK = 600  # 100 clients' frames, six times: about 190 KB, a few reads' worth


class Echo(Backend):
    """The flood's Twisted-native echo backend (``backends.py twisted``)."""

    def on_message(self, message: str, context: Any) -> object:
        """Send the message back to its client."""
        return self.broker.send_private_message(context.client_id, message)


class Discarding(StringTransport):
    """A connected transport that keeps nothing written (the replies would only grow a buffer)."""

    def write(self, data: bytes) -> None:
        """Drop ``data``."""


@implementer(IStreamClientEndpoint)
class InMemory:
    """An endpoint whose connection is made at once, over a :class:`Discarding` transport."""

    protocol: BrokerProtocol

    def connect(self, factory: BrokerClientFactory) -> Deferred[BrokerProtocol]:
        """Connect ``factory``'s protocol now."""
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(Discarding())
        return succeed(self.protocol)


def whole_path(rounds: int, blocks: int) -> float:
    """Microseconds per echoed message through the protocol, dispatcher, handler and send (best round)."""
    factory = BrokerClientFactory(Echo(), Clock())
    endpoint = InMemory()
    factory.connect(endpoint)
    protocol = endpoint.protocol
    frames = broker_sim.client_frames(100, 100)
    block = b"".join(frames) * (FRAMES_PER_BLOCK // len(frames))
    protocol.dataReceived(frames[0])  # the first frame settles the connection (no hello: no extensions)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(blocks):
            protocol.dataReceived(block)
        best = min(best, time.perf_counter() - start)
    return best / (blocks * FRAMES_PER_BLOCK) * 1e6


def part(statement: str, names: dict[str, Any], number: int = 200_000) -> float:
    """Microseconds per run of ``statement`` (best of 5)."""
    return min(timeit.repeat(statement, globals=names, number=number, repeat=5)) / number * 1e6


def main() -> None:
    """Print the whole path's cost per message, then the parts every implementation pays."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=200, help=f"blocks of {FRAMES_PER_BLOCK} frames per round")
    args = parser.parse_args()
    line = broker_sim.client_frames(100, 1)[0].rstrip(b"\n")
    params = orjson.loads(line)["params"]
    names = {"orjson": orjson, "wire": wire, "line": line, "raw": params["context"], "message": params["message"],
             "context_from_wire": context_from_wire, "succeed": succeed}
    print(f"whole path, frame to reply (in-process)   {whole_path(args.rounds, args.blocks):6.2f} us per message")
    print(f"  of which, paid by any implementation of the documented API ({len(line)} B frame):")
    for label, statement in [
        ("decode the frame's JSON (orjson.loads)", "orjson.loads(line)"),
        ("the handler's Context", "context_from_wire(raw)"),
        ("encode the reply (wire.private_message_frame)", "wire.private_message_frame('client-1', message)"),
        ("the Deferred a send returns (succeed)", "succeed(None)"),
    ]:
        print(f"  {label:46s} {part(statement, names):6.2f} us")


if __name__ == "__main__":
    main()
