"""WebSocket load generator for the end-to-end benchmark; prints one JSON line of results.

    python benchmarks/loadgen.py --url ws://127.0.0.1:P/ws/bench --clients 100 --seconds 3

Connects ``--clients`` WebSocket clients (``websockets``, a library neither
the broker nor the backends use), then each sends a ``--size``-byte message,
waits for its echo, and repeats (closed loop) for ``--seconds``. Reports
messages per second over all clients and round-trip percentiles. Runs in a
process of its own so that its cost is not charged to the broker or backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from websockets.asyncio.client import ClientConnection, connect

CONNECTS_AT_ONCE = 50


async def open_client(url: str, deadline: float) -> ClientConnection:
    """A connected client whose first echo came back, retrying until the backend is there."""
    while True:
        try:
            client = await connect(url, open_timeout=5, max_size=None, compression=None)
            await client.send("hello")
            await asyncio.wait_for(client.recv(), 5)
            return client
        except Exception:  # refused, handshake failed (no backend yet), or no echo in time
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def echo_loop(client: ClientConnection, message: str, until: float, times: list[float]) -> None:
    """Send, await the echo, record the round trip; until the monotonic time ``until``."""
    while time.monotonic() < until:
        start = time.perf_counter()
        await client.send(message)
        await client.recv()
        times.append(time.perf_counter() - start)


async def main(url: str, clients: int, seconds: float, size: int, timeout: float) -> dict[str, float]:
    """Connect every client, run the closed loops, close, and summarise."""
    deadline = time.monotonic() + timeout
    first = await open_client(url, deadline)  # waits for the backend to be connected
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

    async def opened() -> ClientConnection:
        async with gate:
            return await open_client(url, deadline)

    start = time.monotonic()
    rest = await asyncio.wait_for(asyncio.gather(*(opened() for _ in range(clients - 1))),
                                  max(1.0, deadline - time.monotonic()))
    connect_seconds = time.monotonic() - start
    everyone = [first, *rest]
    times: list[float] = []
    message = "x" * size
    begin = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(echo_loop(c, message, begin + seconds, times) for c in everyone)),
                           seconds + 30)
    elapsed = time.monotonic() - begin
    await asyncio.gather(*(c.close() for c in everyone), return_exceptions=True)
    times.sort()
    return {
        "clients": clients,
        "messages": len(times),
        "msgs_per_s": len(times) / elapsed,
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
        "connect_seconds": connect_seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0, help="for connecting everyone")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.url, args.clients, args.seconds, args.size, args.timeout))))
    sys.exit(0)
