"""The decorator face: a backend written as a few functions registered on a ``PyStrands`` app.

Clients connect to ``ws://<broker>:8080/ws/<room>``. Each gets a private
welcome with the number of people in the room; messages go to the room
prefixed with the first 8 characters of the sender's id; ``/who`` answers
privately with the room's head count. Under ``app.run()`` a plain function
runs on the app's I/O thread, an ``async def`` one on an event loop there;
both kinds are used below.

    python -m pystrands server
    python -m examples.decorators --port 8081
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections import Counter

from pystrands import PyStrands
from pystrands.context import ConnectionRequestContext, Context

app = PyStrands()
people = Counter[str]()
people_lock = threading.Lock()


@app.on_connection_request
def choose_room(request: ConnectionRequestContext) -> bool:
    """Every client is welcome; the last part of the URL names its room."""
    request.context.room_id = request.url.rstrip("/").rsplit("/", 1)[-1] or "lobby"
    return True


@app.on_new_connection
def welcome(context: Context) -> None:
    """Count the newcomer in and greet it privately."""
    with people_lock:
        people[context.room_id] += 1
        here = people[context.room_id]
    app.send_private_message(context.client_id, f"welcome to {context.room_id}, {here} here now")


@app.on_message
async def relay(message: str, context: Context) -> None:
    """Answer ``/who`` privately; relay anything else to the room."""
    if message.strip() == "/who":
        await app.send_private_message(context.client_id, f"{people[context.room_id]} in {context.room_id}")
    else:
        await app.send_room_message(context.room_id, f"{context.client_id[:8]}: {message}")


@app.on_disconnect
def goodbye(context: Context) -> None:
    """Count the leaver out."""
    with people_lock:
        people[context.room_id] -= 1


def main() -> None:
    """Parse the broker address, then serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="A backend made of decorated functions.")
    parser.add_argument("--host", default=os.environ.get("PYSTRANDS_BROKER_HOST", "localhost"),
                        help="broker host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PYSTRANDS_BROKER_PORT", "8081")),
                        help="broker's backend port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app.host, app.port = args.host, args.port
    app.run()


if __name__ == "__main__":
    main()
