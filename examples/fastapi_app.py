"""A PyStrands backend inside a FastAPI application, on one asyncio event loop.

The backend starts in the app's lifespan and stops with it:

* WebSocket clients connect through the broker; the backend puts each in the
  room named by the URL's last part and echoes what they say to their room;
* ``POST /rooms/<room>`` with a text body sends that text to every client of
  the room, from an ordinary HTTP request.

Run it beside a broker (``python -m pystrands server``)::

    PYSTRANDS_BROKER_PORT=8081 uvicorn examples.fastapi_app:app --port 8000
    curl -d 'hello everyone' http://localhost:8000/rooms/lobby
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request

from pystrands import AsyncPyStrandsClient, ConnectionRequestContext, Context


class EchoBackend(AsyncPyStrandsClient):
    """Rooms from the URL; every message is echoed to the sender's room."""

    async def on_connection_request(self, request: ConnectionRequestContext) -> bool:
        request.context.room_id = request.url.rstrip("/").rsplit("/", 1)[-1] or "lobby"
        return True

    async def on_message(self, message: str, context: Context) -> None:
        await self.send_room_message(context.room_id, f"echo: {message}")


backend = EchoBackend(
    host=os.environ.get("PYSTRANDS_BROKER_HOST", "localhost"),
    port=int(os.environ.get("PYSTRANDS_BROKER_PORT", "8081")),
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Serve the backend for as long as the web app runs."""
    serving = asyncio.create_task(backend.run_forever())
    yield
    await backend.disconnect()
    await serving


app = FastAPI(lifespan=lifespan)


@app.post("/rooms/{room_id}")
async def send_to_room(room_id: str, request: Request) -> dict[str, Any]:
    """Send the request body (text) to every WebSocket client in ``room_id``; 503 when no broker takes it."""
    text = (await request.body()).decode("utf-8", "replace")
    # Not connected now: answer at once rather than wait for a reconnect; False: the send was dropped.
    if not backend.connected or not await backend.send_room_message(room_id, text):
        raise HTTPException(status_code=503, detail="not connected to the PyStrands broker")
    return {"room": room_id, "sent": text}
