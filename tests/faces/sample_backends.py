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


@app.on_message
async def app_echo(message: str, context: Context) -> None:
    await app.send_room_message(context.room_id, f"{message}:{threading.current_thread().name}")


class ThreeAtOnce(PyStrandsClient):
    """Replies only once three handlers wait together: proof of three handler threads (else a 5 s timeout)."""

    together = threading.Barrier(3, timeout=5)

    def on_message(self, message: str, context: Context) -> None:
        self.together.wait()
        self.send_private_message(context.client_id, f"{message}:together")
