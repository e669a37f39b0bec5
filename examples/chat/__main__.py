"""``python -m examples.chat``: the embedded broker serving the chat page, and the chat backend.

The broker runs as a child process (``python -m pystrands server --static
...``) in its own session, so a Ctrl-C reaches this process only and the
broker is stopped exactly once, after the backend has disconnected. With
``--no-broker`` only the backend runs, for a broker started separately with
``--static examples/chat/static``.

"Chat demo ready" is printed only once the broker has said that it listens
on both ports (the line ``python -m pystrands server`` prints when its
``BrokerService`` is listening) and the backend is connected to it (the
face's ``connect()`` and ``connected``). If the broker cannot listen on a
port, the demo prints one line on stderr naming the port and what to do,
and exits with status 1; the broker's own log of the failure is held back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from .backend import ChatBackend

STATIC = Path(__file__).resolve().parent / "static"

#: Seconds allowed for the broker to listen and the backend to connect, and for the broker to stop.
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
#: The start of the line ``python -m pystrands server`` prints on stdout once both ports listen.
LISTENING = b"PyStrands broker: "
#: How it reports a port it cannot listen on (Twisted's ``CannotListenError``) on stderr.
CANNOT_LISTEN = re.compile(r"Couldn't listen on \S*:(?P<port>\d+): (?:\[Errno \d+\] )?(?P<why>[^\n]*?)\.?$",
                           re.MULTILINE)
CHUNK = 64 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Ports from flags, defaulting to the broker's environment variables, then 8080/8081."""
    parser = argparse.ArgumentParser(prog="python -m examples.chat", description=__doc__.splitlines()[0])
    parser.add_argument("--ws-port", type=int, default=int(os.environ.get("PYSTRAND_WS_PORT") or 8080),
                        help="port of the page and the WebSockets (default 8080)")
    parser.add_argument("--tcp-port", type=int, default=int(os.environ.get("PYSTRAND_TCP_PORT") or 8081),
                        help="port where the broker listens for backends, on 127.0.0.1 (default 8081)")
    parser.add_argument("--ws-interface", default="127.0.0.1",
                        help="interface of the page and the WebSockets (default 127.0.0.1, this machine only;"
                             " 0.0.0.0 opens the unauthenticated chat to the network)")
    parser.add_argument("--no-broker", action="store_true",
                        help="run the backend only, for a broker already serving examples/chat/static")
    return parser.parse_args(argv)


class BrokerChild:
    """The broker child process; its output is passed on, but stderr is held back until it listens."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.exited = asyncio.ensure_future(process.wait())
        self._held: bytearray | None = bytearray()
        self._stderr = asyncio.ensure_future(self._copy_stderr())
        self._stdout: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls, ws_port: int, tcp_port: int, ws_interface: str) -> BrokerChild:
        """Start the embedded broker on the given ports, serving the page; its flags win over the environment."""
        environment = {name: value for name, value in os.environ.items() if not name.startswith("PYSTRAND_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port),
            "--ws-interface", ws_interface, "--static", str(STATIC), env=environment, start_new_session=True,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(process)

    async def listening(self) -> bool:
        """True once the broker has said that it listens on both ports; False if it exits first."""
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # a line over the reader's limit: not the one awaited
                line = await stdout.read(CHUNK)
            if not line:
                return False
            _write(sys.stdout, line)
            if line.startswith(LISTENING):
                held, self._held = self._held, None
                _write(sys.stderr, bytes(held or b""))
                self._stdout = asyncio.ensure_future(_copy(stdout, sys.stdout))
                return True

    async def failure(self) -> str:
        """What it wrote on stderr, once it has exited (without having listened)."""
        await self.exited
        await self._stderr
        return bytes(self._held or b"").decode(errors="replace")

    async def _copy_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        while chunk := await stderr.read(CHUNK):
            if self._held is not None:
                self._held += chunk
            else:
                _write(sys.stderr, chunk)


async def _copy(stream: asyncio.StreamReader, to: TextIO) -> None:
    while chunk := await stream.read(CHUNK):
        _write(to, chunk)


def _write(to: TextIO, data: bytes) -> None:
    if data:
        to.buffer.write(data)
        to.flush()


def explain_cannot_listen(output: str, ws_port: int, tcp_port: int) -> str | None:
    """One line from the broker's stderr: the port it cannot listen on and what to do; None if not that."""
    found = CANNOT_LISTEN.search(output)
    if found is None:
        return None
    port = int(found["port"])
    if port == tcp_port and port != ws_port:
        role, variable, flag = "where the backend connects", "PYSTRAND_TCP_PORT", "--tcp-port"
    else:
        role, variable, flag = "the chat page and its WebSockets", "PYSTRAND_WS_PORT", "--ws-port"
    why = "is in use" if "in use" in found["why"].lower() else f"cannot be listened on ({found['why']})"
    other = port + 10 if port + 10 <= 65535 else 8090
    return (f"Port {port} ({role}) {why}: stop what uses it, or pick another port:"
            f" `{variable}={other} make demo` (or `python -m examples.chat {flag} {other}`).")


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


async def first_of(*awaitables: Any) -> None:
    """Return once one of ``awaitables`` (futures or coroutines) is done; the others go on."""
    await asyncio.wait([asyncio.ensure_future(each) for each in awaitables], return_when=asyncio.FIRST_COMPLETED)


def new_backend(tcp_port: int) -> ChatBackend:
    """The chat backend for the broker's backend port on this machine."""
    return ChatBackend(host="127.0.0.1", port=tcp_port, reconnect_delay=0.5, max_reconnect_delay=5.0)


async def connect(backend: ChatBackend, tcp_port: int, until: asyncio.Future[Any]) -> bool:
    """True once ``backend`` is connected; False if ``until`` is done or STARTUP_TIMEOUT passes first."""
    if await backend.connect():
        return True
    print(f"Not connected to the broker at 127.0.0.1:{tcp_port} yet; retrying.", flush=True)
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
    while not backend.connected:  # auto_reconnect retries in the background
        if until.done() or asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def serve(backend: ChatBackend, until: asyncio.Future[Any]) -> None:
    """Serve until ``until`` is done, then disconnect."""
    watcher = asyncio.ensure_future(backend.forget_members_while_offline())
    await until
    watcher.cancel()
    await backend.disconnect()


async def run_backend_only(tcp_port: int, stopped: asyncio.Future[Any]) -> int:
    """``--no-broker``: the backend alone, waiting for its broker if need be, until stopped."""
    backend = new_backend(tcp_port)
    if not await backend.connect():
        print(f"Not connected to the broker at 127.0.0.1:{tcp_port} yet; retrying.", flush=True)
    print("Chat backend running; Ctrl-C stops it.", flush=True)
    await serve(backend, stopped)
    return 0


async def run(ws_port: int, tcp_port: int, with_broker: bool, ws_interface: str) -> int:
    """Serve until SIGINT/SIGTERM/SIGHUP (status 0), or until the broker fails or dies (status 1)."""
    stop = stop_on_signals()
    stopped = asyncio.ensure_future(stop.wait())
    if not with_broker:
        return await run_backend_only(tcp_port, stopped)
    broker = await BrokerChild.start(ws_port, tcp_port, ws_interface)
    listening = asyncio.ensure_future(broker.listening())
    await first_of(listening, stopped, asyncio.sleep(STARTUP_TIMEOUT))
    if not (listening.done() and listening.result()):
        listening.cancel()
        if listening.done():  # its stdout closed: it is exiting; signalling it now could race its reaping
            await asyncio.wait([broker.exited], timeout=STOP_TIMEOUT)
        await stop_broker(broker.process)
        if stopped.done():
            return 0
        output = await broker.failure()
        explained = explain_cannot_listen(output, ws_port, tcp_port)
        if explained is None:
            sys.stderr.write(output)
            explained = (f"The broker did not start (exit status {broker.process.returncode})." if listening.done()
                         else f"The broker did not listen within {STARTUP_TIMEOUT:.0f}s.")
        print(explained, file=sys.stderr, flush=True)
        return 1

    until = asyncio.ensure_future(first_of(stopped, broker.exited))
    backend = new_backend(tcp_port)
    status = 0
    if await connect(backend, tcp_port, until):
        print(f"\n  Chat demo ready: open http://localhost:{ws_port}/ in two browser tabs.  Ctrl-C stops it.\n",
              flush=True)
        await serve(backend, until)
    else:
        await backend.disconnect()
        if not until.done():
            print(f"The chat backend did not connect to the broker at 127.0.0.1:{tcp_port} within"
                  f" {STARTUP_TIMEOUT:.0f}s.", file=sys.stderr, flush=True)
            status = 1
    if broker.exited.done():
        print(f"The broker stopped unexpectedly (exit status {broker.process.returncode}).", file=sys.stderr)
        return 1
    stopped.cancel()
    await stop_broker(broker.process)
    print("Chat demo stopped.", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point: logging to stderr, then run until Ctrl-C."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chat-backend %(levelname)s %(message)s")
    return asyncio.run(run(args.ws_port, args.tcp_port, not args.no_broker, args.ws_interface))


if __name__ == "__main__":
    sys.exit(main())
