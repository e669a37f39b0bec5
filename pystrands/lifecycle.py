"""The life cycle of a backend's connection to its broker: its states, and every transition, in one table.

:class:`~pystrands.protocol.BrokerClientFactory` is in exactly one
:class:`ConnectionState` at a time; it moves only through
:data:`TRANSITIONS`, fed by events (:class:`Event`: a public call, an
attempt's outcome, a lost connection, a timer). A pair that is not in the table is
a bug, raised as :class:`InvalidTransition` rather than ignored. What the
factory does on each transition (start an attempt, flush the buffer, fire
waiters) lives beside the event that causes it, in the factory.

Why a table and not ``automat``: automat hides the current state on
purpose, and callers need it public (``factory.state``: logs, health
checks, the faces' own machine); a frozen mapping shows every
transition at a glance, is typed under ``mypy --strict`` without
plugins, and costs one dict lookup per event. Sends are no events: the
hot path reads ``factory.current`` and never touches the machine.

Why not reconnect through Twisted's ``ClientService``: it is a machine of
its own (automat, state hidden) owning the retries, while the factory must
stay a ``ReconnectingClientFactory`` with its constructor and attributes;
two machines for one connection would disagree on where it stands. Its
split is kept instead: the retry policy (:mod:`pystrands.retry`) is a pure
object apart from the protocol, as ``ClientService``'s ``backoffPolicy`` is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["TRANSITIONS", "ConnectionMachine", "ConnectionState", "Event", "InvalidTransition"]


class ConnectionState(str, enum.Enum):
    """Where a backend's connection to its broker stands; the value is what logs and reprs say."""

    NEVER_STARTED = "never started"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING_TO_RETRY = "waiting to retry"
    STOPPING = "stopping"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """What happens to a connection."""

    CONNECT = "connect() called"
    ATTEMPT_SUCCEEDED = "an attempt connected"
    ATTEMPT_FAILED = "an attempt failed; the policy retries"
    CONNECTION_LOST = "the connection was lost; the policy retries"
    GIVE_UP = "an attempt failed or the connection was lost, and the policy does not retry (or stopTrying())"
    RETRY_DUE = "the retry delay is over"
    STOP = "stop() called"
    CLOSED = "the stop is complete: handlers done or timed out, connection closed"


_S = ConnectionState
_E = Event

#: (state, event) -> next state. Absent pairs cannot happen (InvalidTransition).
TRANSITIONS: Mapping[tuple[ConnectionState, Event], ConnectionState] = MappingProxyType({
    (_S.NEVER_STARTED, _E.CONNECT): _S.CONNECTING,
    (_S.NEVER_STARTED, _E.STOP): _S.STOPPING,

    (_S.CONNECTING, _E.ATTEMPT_SUCCEEDED): _S.CONNECTED,
    (_S.CONNECTING, _E.ATTEMPT_FAILED): _S.WAITING_TO_RETRY,
    (_S.CONNECTING, _E.GIVE_UP): _S.STOPPED,
    (_S.CONNECTING, _E.STOP): _S.STOPPING,  # cancels the attempt

    (_S.CONNECTED, _E.CONNECTION_LOST): _S.WAITING_TO_RETRY,
    (_S.CONNECTED, _E.GIVE_UP): _S.STOPPED,
    (_S.CONNECTED, _E.STOP): _S.STOPPING,  # lets handlers finish, then closes

    (_S.WAITING_TO_RETRY, _E.RETRY_DUE): _S.CONNECTING,
    (_S.WAITING_TO_RETRY, _E.GIVE_UP): _S.STOPPED,  # stopTrying(): the timer is cancelled
    (_S.WAITING_TO_RETRY, _E.STOP): _S.STOPPING,  # cancels the timer

    # Stopping absorbs what ends meanwhile; a second stop() only waits for the first.
    (_S.STOPPING, _E.STOP): _S.STOPPING,
    (_S.STOPPING, _E.ATTEMPT_SUCCEEDED): _S.STOPPING,  # an attempt that connected anyway is closed
    (_S.STOPPING, _E.ATTEMPT_FAILED): _S.STOPPING,  # the cancelled attempt
    (_S.STOPPING, _E.CONNECTION_LOST): _S.STOPPING,
    (_S.STOPPING, _E.CLOSED): _S.STOPPED,

    # Stopped after giving up, handlers may still run: stop() waits for them as from any state.
    (_S.STOPPED, _E.STOP): _S.STOPPING,
    (_S.STOPPED, _E.ATTEMPT_SUCCEEDED): _S.STOPPED,  # an endpoint that ignored the cancel: closed
})


class InvalidTransition(RuntimeError):
    """An event that cannot happen in the current state (a bug, or a call made in the wrong state)."""

    def __init__(self, state: ConnectionState, event: Event) -> None:
        super().__init__(f"{event.value!r} cannot happen while {state.value}")
        self.state = state
        self.event = event


class ConnectionMachine:
    """The current state, moved only through :data:`TRANSITIONS`."""

    def __init__(self) -> None:
        self.state = ConnectionState.NEVER_STARTED

    def handle(self, event: Event) -> ConnectionState:
        """Move on ``event``; the new state. InvalidTransition when the table has no such move."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise InvalidTransition(self.state, event) from None
        return self.state
