"""Backends that tests run in subprocesses (twistd, scripts): one per face."""

from __future__ import annotations

import asyncio
import threading

from pystrands import AsyncPyStrandsClient, Context, PyStrands, PyStrandsClient


class BlockingEcho(PyStrandsClient):
    """Echoes to the room, saying which thread ran the handler."""

    def on_message(self, message: str, context: Context) -> None:
        self.send_room_message(context.room_id, f"{message}:{threading.current_thread().name}")


class AsyncEcho(AsyncPyStrandsClient):
    """Echoes to the room after an asyncio sleep, saying whether it ran as an asyncio task."""

    async def on_message(self, message: str, context: Context) -> None:
        await asyncio.sleep(0.01)
        task = asyncio.current_task()
        await self.send_room_message(context.room_id, f"{message}:{'task' if task else 'no task'}")


app = PyStrands()

#: A face built with where its broker is and how to talk to it: what ``twistd pystrands`` keeps.
configured = BlockingEcho(host="127.0.0.1", port=18681, backend_token="s3cret", reconnect_delay=0.5,
                          max_reconnect_delay=2.0, concurrency=3, idle_timeout=20.0, max_pending_events=50)
#: A face built for a broker at an IPv6 address.
configured_v6 = BlockingEcho(host="::1", port=18682)


@app.on_message
async def app_echo(message: str, context: Context) -> None:
    await app.send_room_message(context.room_id, f"{message}:{threading.current_thread().name}")


class ThreeAtOnce(PyStrandsClient):
    """Replies only once three handlers wait together: proof of three handler threads (else a 5 s timeout)."""

    together = threading.Barrier(3, timeout=5)

    def on_message(self, message: str, context: Context) -> None:
        self.together.wait()
        self.send_private_message(context.client_id, f"{message}:together")
