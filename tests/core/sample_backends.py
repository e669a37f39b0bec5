"""Backends named by the twistd tests (as `--backend tests.core.sample_backends.X`)."""

from __future__ import annotations

from typing import Any

from pystrands import Backend


class Echo(Backend):
    """Accepts everyone into the room named by the URL's last part; echoes to the room."""

    def on_connection_request(self, request: Any) -> bool:
        request.context.room_id = request.url.rsplit("/", 1)[-1]
        request.context.metadata = {"via": "twistd"}
        return True

    def on_message(self, message: str, context: Any) -> Any:
        return self.broker.send_room_message(context.room_id, f"echo:{message}:{context.metadata['via']}")


echo_instance = Echo()
not_a_backend = object()


class NeedsArguments(Backend):
    def __init__(self, required: str) -> None:
        self.required = required


class Incomplete:
    """Declares nothing and has only one callback."""

    def on_message(self, message: str, context: Any) -> None:
        pass
