"""The smallest backend: the blocking face, echoing each message to the sender's room.

Clients connect to ``ws://<broker>:8080/ws/<room>``; everyone in that room
sees ``echo: <message>``. Start a broker, then this backend::

    python -m pystrands server
    python examples/echo.py --host localhost --port 8081

``PYSTRANDS_BROKER_HOST`` and ``PYSTRANDS_BROKER_PORT`` set the defaults of the two flags.
"""

from __future__ import annotations

import argparse
import logging
import os

from pystrands import PyStrandsClient
from pystrands.context import ConnectionRequestContext, Context


class EchoBackend(PyStrandsClient):
    """Puts each client in the room named by its URL and echoes its messages there."""

    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        request.context.room_id = request.url.rstrip("/").rsplit("/", 1)[-1] or "lobby"
        return True

    def on_message(self, message: str, context: Context) -> None:
        self.send_room_message(context.room_id, f"echo: {message}")


def main() -> None:
    """Parse the broker address, then serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Echo every message to the sender's room.")
    parser.add_argument("--host", default=os.environ.get("PYSTRANDS_BROKER_HOST", "localhost"),
                        help="broker host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PYSTRANDS_BROKER_PORT", "8081")),
                        help="broker's backend port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    EchoBackend(host=args.host, port=args.port).run_forever()


if __name__ == "__main__":
    main()
