"""A Flask application that is also a PyStrands backend: the blocking face, sending from views.

The backend connects once, when the app starts, and runs its own threads;
the views call its send methods like any other library. The backend keeps
the last messages of each room, which a view lists.

* ``POST /rooms/<room>`` (the text as the body): sent to every client of the room;
* ``POST /broadcast`` (the text as the body): sent to every client;
* ``GET /rooms/<room>/messages``: the last 50 messages clients sent in the room, as JSON;
* ``GET /status``: whether the backend is connected to the broker.

WebSocket clients connect to ``ws://<broker>:8080/ws/<room>``::

    python -m pystrands server
    python examples/flask_app.py --http-port 5000 --port 8081
    curl -d 'hello, room' http://localhost:5000/rooms/lobby
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import threading
from collections import defaultdict, deque

from flask import Flask, Response, jsonify, request

from pystrands import PyStrandsClient
from pystrands.context import ConnectionRequestContext, Context

#: Seconds a view waits for a send to be written to the broker before answering 503.
SEND_TIMEOUT = 5.0


class RoomsBackend(PyStrandsClient):
    """Rooms from the URL; remembers the last messages of each room for the views."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.lock = threading.Lock()
        self.history: defaultdict[str, deque[dict[str, str]]] = defaultdict(lambda: deque(maxlen=50))

    def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        request.context.room_id = request.url.rstrip("/").rsplit("/", 1)[-1] or "lobby"
        return True

    def on_message(self, message: str, context: Context) -> None:
        with self.lock:
            self.history[context.room_id].append({"client_id": context.client_id, "message": message})

    def messages(self, room: str) -> list[dict[str, str]]:
        """A copy of the room's recent messages, oldest first."""
        with self.lock:
            return list(self.history.get(room, ()))


def create_app(backend: RoomsBackend) -> Flask:
    """The Flask app whose views send through ``backend``."""
    app = Flask(__name__)

    def sent(future: concurrent.futures.Future) -> Response:
        try:
            future.result(SEND_TIMEOUT)
        except Exception as failure:  # NotConnectedError, SendBufferFull, a timeout
            return Response(f"not sent: {failure}\n", status=503, mimetype="text/plain")
        return Response("sent\n", status=202, mimetype="text/plain")

    @app.post("/rooms/<room>")
    def send_to_room(room: str) -> Response:
        return sent(backend.send_room_message(room, request.get_data(as_text=True)))

    @app.post("/broadcast")
    def broadcast() -> Response:
        return sent(backend.broadcast_message(request.get_data(as_text=True)))

    @app.get("/rooms/<room>/messages")
    def messages(room: str) -> Response:
        return jsonify(backend.messages(room))

    @app.get("/status")
    def status() -> Response:
        return jsonify({"connected": backend.connected})

    return app


def main() -> None:
    """Connect the backend, serve HTTP until Ctrl-C, then disconnect."""
    parser = argparse.ArgumentParser(description="Flask views that send to PyStrands rooms.")
    parser.add_argument("--host", default=os.environ.get("PYSTRANDS_BROKER_HOST", "localhost"),
                        help="broker host")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PYSTRANDS_BROKER_PORT", "8081")),
                        help="broker's backend port")
    parser.add_argument("--http-host", default="127.0.0.1", help="interface of the web app")
    parser.add_argument("--http-port", type=int, default=5000, help="port of the web app")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    backend = RoomsBackend(host=args.host, port=args.port)
    backend.connect()
    try:
        create_app(backend).run(host=args.http_host, port=args.http_port)
    finally:
        backend.disconnect()


if __name__ == "__main__":
    main()
