"""``python -m examples.chat``: the embedded broker serving the chat page, and the chat backend.

The broker runs as a child process (``python -m pystrands server --static
...``) in its own session, so a Ctrl-C reaches this process only and the
broker is stopped exactly once, after the backend has disconnected. With
``--no-broker`` only the backend runs, for a broker started separately with
``--static examples/chat/static``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from .backend import ChatBackend

STATIC = Path(__file__).resolve().parent / "static"

#: Seconds allowed for the broker to open its port, and to stop.
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Ports from flags, defaulting to the broker's environment variables, then 8080/8081."""
    parser = argparse.ArgumentParser(prog="python -m examples.chat", description=__doc__.splitlines()[0])
    parser.add_argument("--ws-port", type=int, default=int(os.environ.get("PYSTRAND_WS_PORT") or 8080),
                        help="port of the page and the WebSockets (default 8080)")
    parser.add_argument("--tcp-port", type=int, default=int(os.environ.get("PYSTRAND_TCP_PORT") or 8081),
                        help="port where the broker listens for backends, on 127.0.0.1 (default 8081)")
    parser.add_argument("--no-broker", action="store_true",
                        help="run the backend only, for a broker already serving examples/chat/static")
    return parser.parse_args(argv)


async def start_broker(ws_port: int, tcp_port: int) -> asyncio.subprocess.Process:
    """Start the embedded broker on the given ports, serving the page; its flags win over the environment."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYSTRAND_")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port),
        "--static", str(STATIC), env=environment, start_new_session=True)


async def wait_for_port(port: int, broker: asyncio.subprocess.Process) -> bool:
    """True once ``port`` accepts connections; False if the broker exits or the startup timeout passes."""
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
    while broker.returncode is None and asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


async def stop_broker(broker: asyncio.subprocess.Process) -> int:
    """SIGTERM, then SIGKILL if it has not stopped in time; its exit status."""
    if broker.returncode is None:
        broker.terminate()
        try:
            await asyncio.wait_for(broker.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            broker.kill()
    return await broker.wait()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT (Ctrl-C), SIGTERM or SIGHUP (terminal closed), instead of dying mid-way.

    The broker is in a session of its own, so this process must outlive the
    signal long enough to stop it, or it would keep the ports after we are gone.
    """
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    return stop


async def serve_backend(tcp_port: int, until: asyncio.Future, ready: str) -> None:
    """Run the chat backend against the broker on ``tcp_port``, print ``ready``, serve until ``until`` is done."""
    backend = ChatBackend(host="127.0.0.1", port=tcp_port, reconnect_delay=0.5, max_reconnect_delay=5.0)
    if not await backend.connect():
        print(f"Not connected to the broker at 127.0.0.1:{tcp_port} yet; retrying.", flush=True)
    print(ready, flush=True)
    watcher = asyncio.ensure_future(backend.forget_members_while_offline())
    await until
    watcher.cancel()
    await backend.disconnect()


async def run(ws_port: int, tcp_port: int, with_broker: bool) -> int:
    """Serve until SIGINT/SIGTERM/SIGHUP (status 0), or until the broker fails or dies (status 1)."""
    stop = stop_on_signals()
    stopped = asyncio.ensure_future(stop.wait())
    if not with_broker:
        await serve_backend(tcp_port, stopped, "Chat backend running; Ctrl-C stops it.")
        return 0
    broker = await start_broker(ws_port, tcp_port)
    if not await wait_for_port(ws_port, broker):
        print(f"The broker did not start (exit status {broker.returncode}).", file=sys.stderr)
        await stop_broker(broker)
        return 1
    broker_exit = asyncio.ensure_future(broker.wait())
    until = asyncio.ensure_future(asyncio.wait([stopped, broker_exit], return_when=asyncio.FIRST_COMPLETED))
    await serve_backend(tcp_port, until,
                        f"\n  Chat demo ready: open http://localhost:{ws_port}/ in two browser tabs."
                        "  Ctrl-C stops it.\n")
    if broker_exit.done():
        print(f"The broker stopped unexpectedly (exit status {broker.returncode}).", file=sys.stderr)
        return 1
    stopped.cancel()
    await stop_broker(broker)
    print("Chat demo stopped.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: logging to stderr, then run until Ctrl-C."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chat-backend %(levelname)s %(message)s")
    return asyncio.run(run(args.ws_port, args.tcp_port, not args.no_broker))


if __name__ == "__main__":
    sys.exit(main())
