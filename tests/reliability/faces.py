"""The backend every fault test runs, in each face, as a child process.

    twistd -n pystrands --backend tests.reliability.faces.TwistedFace --broker tcp:... [flags]
    python -m tests.reliability.faces {client,async,app} --port P [the same flags]

Every face behaves alike, so a test can swap one for another:

* a handshake on ``/ws/<room>`` is accepted into ``<room>``;
* a message is echoed to its room as ``echo:<message>``, except ``raise``
  (the handler raises), ``hang`` (it never finishes), ``slow`` (it takes
  SLOW_SECONDS, then echoes) and ``tick...`` (ignored: traffic only);
* SIGUSR1 sends BURST messages ``down-<i>`` to room ``lobby`` and prints the
  outcome of each (``sent down-<i> ok`` or ``sent down-<i> failed <Error>``);
* SIGTERM stops it, in-flight handlers getting STOP_TIMEOUT seconds (twistd:
  ``--stop-timeout``; the faces: ``disconnect(STOP_TIMEOUT)``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from pystrands import AsyncPyStrandsClient, Backend, PyStrandsClient
from pystrands.app import PyStrands

BURST = 80
SLOW_SECONDS = 0.5
STOP_TIMEOUT = 1.0


def admit(request: Any) -> bool:
    """Accept the handshake into the room named by the URL's last part."""
    request.context.room_id = request.url.rsplit("/", 1)[-1]
    return True


def report(index: int, error: BaseException | None) -> None:
    """Print the outcome of burst send ``index``."""
    outcome = "ok" if error is None else f"failed {type(error).__name__}"
    print(f"sent down-{index} {outcome}", flush=True)


def watch(index: int, future: Any) -> None:
    """Report a face's send future (concurrent or asyncio) once done."""
    future.add_done_callback(lambda done: report(index, done.exception()))


def burst(send: Callable[[str, str], Any]) -> None:
    """Send BURST messages to room lobby through a face's ``send_room_message``."""
    for index in range(BURST):
        watch(index, send("lobby", f"down-{index}"))


class TwistedFace(Backend):
    """The Twisted-native face, for ``twistd pystrands --backend``."""

    def __init__(self) -> None:
        signal.signal(signal.SIGUSR1, lambda *_: self.broker.clock.callFromThread(self.burst))

    def burst(self) -> None:
        """Send the burst with Deferreds, reporting each."""
        for index in range(BURST):
            sent = self.broker.send_room_message("lobby", f"down-{index}")
            sent.addCallbacks(lambda _, i=index: report(i, None), lambda f, i=index: report(i, f.value))

    def on_connection_request(self, request: Any) -> bool:
        return admit(request)

    def on_message(self, message: str, context: Any) -> Any:
        if message == "raise":
            raise RuntimeError("a handler that raises")
        if message == "hang":
            return Deferred()
        if message.startswith("tick"):
            return None
        if message == "slow":
            return deferLater(self.broker.clock, SLOW_SECONDS, self.broker.send_room_message,
                              context.room_id, "echo:slow")
        return self.broker.send_room_message(context.room_id, f"echo:{message}")


def threaded_on_message(send: Callable[[str, str], Any]) -> Callable[[str, Any], None]:
    """on_message of the faces whose handlers run in worker threads (blocking face, decorators)."""
    def on_message(message: str, context: Any) -> None:
        if message == "raise":
            raise RuntimeError("a handler that raises")
        if message == "hang":
            threading.Event().wait()
        if message.startswith("tick"):
            return
        if message == "slow":
            time.sleep(SLOW_SECONDS)
        send(context.room_id, f"echo:{message}")
    return on_message


class BlockingFace(PyStrandsClient):
    """PyStrandsClient: handlers in worker threads."""

    def on_connection_request(self, request: Any) -> bool:
        return admit(request)

    def on_message(self, message: str, context: Any) -> None:
        threaded_on_message(self.send_room_message)(message, context)


class AsyncFace(AsyncPyStrandsClient):
    """AsyncPyStrandsClient: handlers as tasks on the loop."""

    async def on_connection_request(self, request: Any) -> bool:
        return admit(request)

    async def on_message(self, message: str, context: Any) -> None:
        if message == "raise":
            raise RuntimeError("a handler that raises")
        if message == "hang":
            await asyncio.Event().wait()
        if message.startswith("tick"):
            return
        if message == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        await self.send_room_message(context.room_id, f"echo:{message}")


def run_threaded(run: Callable[[], None], disconnect: Callable[[float], None],
                 send: Callable[[str, str], Any]) -> None:
    """Run a blocking face (or the decorators) with the SIGUSR1 and SIGTERM behaviour."""
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=burst, args=(send,)).start())
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=disconnect, args=(STOP_TIMEOUT,)).start())
    run()


async def run_async(client: AsyncFace) -> None:
    """Run the asyncio face with the SIGUSR1 and SIGTERM behaviour."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, burst, client.send_room_message)
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(client.disconnect(STOP_TIMEOUT)))
    await client.run_forever()


def main() -> None:
    """Run the face named on the command line; the flags are twistd pystrands' own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["client", "async", "app"])
    parser.add_argument("--port", type=int, required=True)
    for flag in ("reconnect-delay", "max-reconnect-delay", "idle-timeout"):
        parser.add_argument(f"--{flag}", type=float)
    for flag in ("send-buffer-size", "concurrency"):
        parser.add_argument(f"--{flag}", type=int)
    args = vars(parser.parse_args())
    kind, port = args.pop("kind"), args.pop("port")
    settings = {name: value for name, value in args.items() if value is not None}
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    if kind == "client":
        client = BlockingFace("127.0.0.1", port, **settings)
        run_threaded(client.run_forever, client.disconnect, client.send_room_message)
    elif kind == "async":
        asyncio.run(run_async(AsyncFace("127.0.0.1", port, **settings)))
    else:
        app = PyStrands("127.0.0.1", port, **settings)
        app.on_connection_request(admit)
        app.on_message(threaded_on_message(app.send_room_message))
        run_threaded(app.run, lambda timeout: app.client.disconnect(timeout), app.send_room_message)


if __name__ == "__main__":
    main()
