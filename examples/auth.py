"""Authentication: a token in a header or in the query string, rooms from the URL, user data in metadata.

Browsers cannot set headers on a WebSocket, so the token may also come as
``?token=...`` (the embedded broker forwards the query string; the reference
broker drops it, and then only the header works)::

    ws://localhost:8080/ws/<room>?token=alice-token
    ws://localhost:8080/ws/<room>   with the header  Authorization: Bearer alice-token

The user found for the token is stored in ``context.metadata`` when the
handshake is accepted, and every later callback reads it from there: messages
are prefixed with the user's name, and only an admin may ``/broadcast``.

    python -m pystrands server
    python examples/auth.py --port 8081
"""

from __future__ import annotations

import argparse
import logging
import os

from pystrands import PyStrandsClient
from pystrands.context import ConnectionRequestContext, Context

#: Token -> user. A real application asks its user store or verifies a signed token here.
USERS = {
    "alice-token": {"user": "alice", "role": "admin"},
    "bob-token": {"user": "bob", "role": "member"},
}


def token_of(request: ConnectionRequestContext) -> str:
    """The bearer token of the Authorization header, else the ``token`` query parameter, else ""."""
    for value in request.headers.get("Authorization", []):
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    return (request.query.get("token") or [""])[0]


class AuthBackend(PyStrandsClient):
    """Accepts known tokens only; the user rides along in the metadata."""

    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        user = USERS.get(token_of(request))
        if user is None:
            logging.warning("Refused a client from %s: unknown token", request.remote_addr)
            return False
        request.context.room_id = request.url.rstrip("/").rsplit("/", 1)[-1] or "lobby"
        request.context.metadata = dict(user)
        return True

    def on_new_connection(self, context: Context) -> None:
        user = context.metadata["user"]
        role = context.metadata["role"]
        self.send_private_message(context.client_id, f"welcome {user} ({role}) to {context.room_id}")
        self.send_room_message(context.room_id, f"{user} joined")

    def on_message(self, message: str, context: Context) -> None:
        user = context.metadata["user"]
        if message.startswith("/broadcast "):
            if context.metadata["role"] != "admin":
                self.send_private_message(context.client_id, "only an admin may /broadcast")
                return
            self.broadcast_message(f"[{user} to everyone] {message.removeprefix('/broadcast ')}")
            return
        self.send_room_message(context.room_id, f"{user}: {message}")

    def on_disconnect(self, context: Context) -> None:
        self.send_room_message(context.room_id, f"{context.metadata['user']} left")


def main() -> None:
    """Parse the broker address, then serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Token authentication, rooms from the URL, metadata.")
    parser.add_argument("--host", default=os.environ.get("PYSTRANDS_BROKER_HOST", "localhost"),
                        help="broker host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PYSTRANDS_BROKER_PORT", "8081")),
                        help="broker's backend port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    AuthBackend(host=args.host, port=args.port).run_forever()


if __name__ == "__main__":
    main()
