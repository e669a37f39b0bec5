"""The echo backends under test, one per process: ``python benchmarks/backends.py KIND --port P``.

Each answers every ``new_message`` with ``send_private_message(client_id,
message)``, after ``--delay-ms`` of handler time when given (a sleep in the
handler's own style: blocking, asyncio or a Twisted timer). The ``client`` and
``async`` kinds use only the documented API, so the same code runs against
this project's ``pystrands`` (the dev venv) and the public ``pystrands`` 1.0.0
(the benchmark venv): ``run.py`` picks the interpreter. ``raw`` is no library
at all, a socket loop that echoes lines, to show the simulator's ceiling.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

ECHO_FROM = b'"action":"new_message"'
ECHO_TO = b'"action":"message_to_connection"'


def run_raw(port: int, delay: float) -> None:
    """Echo each complete line with its action renamed: no JSON, no framework (the ceiling)."""
    sock = socket.create_connection(("127.0.0.1", port))
    partial = b""
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        end = data.rfind(b"\n")
        if end < 0:
            partial += data
            continue
        lines = partial + data[:end + 1]
        partial = data[end + 1:]
        sock.sendall(lines.replace(ECHO_FROM, ECHO_TO))


def run_twisted(port: int, delay: float) -> None:
    """A pystrands.Backend subclass under BackendService on the real reactor."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from pystrands import Backend, BackendService

    class Echo(Backend):
        def on_message(self, message: str, context: Any) -> object:
            if delay:
                return deferLater(reactor, delay, self.broker.send_private_message, context.client_id, message)
            return self.broker.send_private_message(context.client_id, message)

    BackendService(Echo(), f"tcp:host=127.0.0.1:port={port}", reactor=reactor).startService()
    reactor.run()


def run_rooms(port: int, delay: float, connections: int = 1) -> None:
    """The cluster benchmark's backend (Twisted-native): ``/ws/echo/<id>`` gets its messages back,
    ``/ws/room/<room>/<id>`` joins ``<room>`` and each message goes to the whole room; ``connections``
    connections to the broker (with ``--workers``, the kernel spreads them over the workers)."""
    from twisted.internet import reactor

    from pystrands import Backend, BackendService

    class Rooms(Backend):
        def on_connection_request(self, request: Any) -> bool:
            parts = request.url.split("/")
            request.context.room_id = f"room:{parts[3]}" if parts[2] == "room" else "echo"
            return True

        def on_message(self, message: str, context: Any) -> object:
            if context.room_id == "echo":
                return self.broker.send_private_message(context.client_id, message)
            return self.broker.send_room_message(context.room_id, message)

    for _ in range(connections):
        BackendService(Rooms(), f"tcp:host=127.0.0.1:port={port}", reactor=reactor).startService()
    reactor.run()


def run_client(port: int, delay: float) -> None:
    """A PyStrandsClient subclass, run with run_forever()."""
    import time

    from pystrands import PyStrandsClient

    class Echo(PyStrandsClient):
        def on_message(self, message: str, context: Any) -> None:
            if delay:
                time.sleep(delay)
            self.send_private_message(context.client_id, message)

    Echo(host="127.0.0.1", port=port).run_forever()


def run_async(port: int, delay: float) -> None:
    """An AsyncPyStrandsClient subclass, run with asyncio.run(run_forever())."""
    import asyncio

    from pystrands import AsyncPyStrandsClient

    class Echo(AsyncPyStrandsClient):
        async def on_message(self, message: str, context: Any) -> None:
            if delay:
                await asyncio.sleep(delay)
            await self.send_private_message(context.client_id, message)

    asyncio.run(Echo(host="127.0.0.1", port=port).run_forever())


def run_app(port: int, delay: float) -> None:
    """PyStrands decorators: a plain function registered with @app.on_message, run with app.run()."""
    import time

    from pystrands.app import PyStrands

    app = PyStrands(host="127.0.0.1", port=port)

    @app.on_message
    def echo(message: str, context: Any) -> None:
        if delay:
            time.sleep(delay)
        app.send_private_message(context.client_id, message)

    app.run()


KINDS = {"raw": run_raw, "twisted": run_twisted, "rooms": run_rooms, "client": run_client, "async": run_async,
         "app": run_app}


def main() -> None:
    """Run the backend named on the command line until its connection or process ends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="handler time per message")
    parser.add_argument("--connections", type=int, default=1, help="connections to the broker (rooms only)")
    args = parser.parse_args()
    if args.connections != 1 and args.kind != "rooms":
        parser.error("--connections is for the rooms backend only")
    if args.kind != "raw":
        import pystrands
        print(f"backend {args.kind}: pystrands from {pystrands.__file__}", file=sys.stderr, flush=True)
    if args.kind == "rooms":
        run_rooms(args.port, args.delay_ms / 1000, args.connections)
    else:
        KINDS[args.kind](args.port, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
