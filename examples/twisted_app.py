"""A PyStrands backend inside an existing Twisted web application.

One process serves HTTP (twisted.web) and is a PyStrands backend
(BackendService), both children of one MultiService:

* WebSocket clients connect through the broker; the backend puts each in the
  room named by the URL's last part and echoes what they say to their room;
* ``POST /rooms/<room>`` with a text body sends that text to every client of
  the room, from an ordinary web request.

Run it beside a broker (``python -m pystrands server``)::

    python -m examples.twisted_app --http tcp:8000 --broker tcp:host=localhost:port=8081
    curl -d 'hello everyone' http://localhost:8000/rooms/lobby
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pystrands import Backend, BackendService


class EchoBackend(Backend):
    """Rooms from the URL; every message is echoed to the sender's room."""

    def on_connection_request(self, request: Any) -> bool:
        request.context.room_id = request.url.rstrip("/").rsplit("/", 1)[-1] or "lobby"
        return True

    def on_message(self, message: str, context: Any) -> Deferred[None]:
        return self.broker.send_room_message(context.room_id, f"{context.client_id[:8]}: {message}")


class RoomResource(Resource):
    """POST /rooms/<room>: send the request body to every client in the room."""

    isLeaf = True

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend

    def render_POST(self, request: Request) -> Any:
        room = request.postpath[0].decode("utf-8") if request.postpath else ""
        text = request.content.read().decode("utf-8", "replace")
        if not room or not text:
            request.setResponseCode(400)
            return b"POST /rooms/<room> with the text as the body\n"

        def sent(_: object) -> None:
            request.write(b"sent\n")
            request.finish()

        def failed(failure: Any) -> None:
            request.setResponseCode(503)
            request.write(f"not sent: {failure.getErrorMessage()}\n".encode())
            request.finish()

        self.backend.broker.send_room_message(room, text).addCallbacks(sent, failed)
        return NOT_DONE_YET


def make_application(reactor: Any, http: str, broker: str) -> MultiService:
    """The web server and the PyStrands backend, as one service tree."""
    backend = EchoBackend()
    root = Resource()
    root.putChild(b"rooms", RoomResource(backend))
    application = MultiService()
    StreamServerEndpointService(serverFromString(reactor, http), Site(root)).setServiceParent(application)
    BackendService(backend, broker, reactor=reactor).setServiceParent(application)
    return application


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description="A Twisted web app that is also a PyStrands backend.")
    parser.add_argument("--http", default="tcp:8000", help="server endpoint of the web app")
    parser.add_argument("--broker", default="tcp:host=localhost:port=8081", help="client endpoint of the broker")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    application = make_application(reactor, args.http, args.broker)
    application.startService()
    done: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    return done


if __name__ == "__main__":
    react(main, (sys.argv[1:],))
