"""One node of a broker cluster over Redis: the router, with rooms, sends and backends made cluster-wide.

:class:`ClusterBroker` is a :class:`~pystrands.broker.router.Broker` that
also publishes what other nodes must see and acts on what they publish.
The single-node broker never imports this module: without ``--redis``
nothing here runs. docs/CLUSTER.md is the design; in short:

* what a backend sends is delivered here at once and published once, on
  the channel of the room, of the client, or of the whole cluster; a node
  is subscribed to the channel of each room it has members of and of each
  client it holds, so every other member gets it exactly once, and in the
  order its backend sent it (one publishing connection per node, one
  subscribed connection per node: Redis keeps that order);
* a node without a backend of its own forwards its clients' handshakes and
  events to a node with one, on that node's channel, sticky per client
  (held while that node is not heard again after a Redis outage; then the
  two tell each other which of their clients whose events go there they
  still have, so that one whose goodbye was lost leaves its backend);
* a client id is claimed in Redis (``SET NX``, renewed by the heartbeats,
  freed at the end; :mod:`.claims` checks the owner) by the node that holds
  it, so one id is connected once in the cluster;
* heartbeats on the nodes channel (and a key per node with an expiry) tell
  who is alive and has backends; a node silent for 1.5 heartbeats is
  forgotten: no more forwarding to it, and its clients leave its backends;
  it is told so (it may have been only cut off) and closes its clients
  served there with 1012;
* while Redis is unreachable the node serves its own clients alone; what it
  could not publish is counted (``dropped_total{reason="cluster_unpublished"}``)
  and logged.
"""

from __future__ import annotations

import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .. import wire
from ..errors import ProtocolError
from . import cluster_wire, extensions
from .claims import Claims
from .cluster_wire import ClusterWireError
from .config import BrokerConfig
from .peers import Peers
from .queue import EventQueue
from .redis_link import CLOSE_TIMEOUT, Link, LinkFactory, RedisLink
from .redis_url import PASSWORD_SHOWN, parse_redis_url, password_on_command_line
from .rooms import Rooms
from .router import Admission, BackendLink, Broker, Client, Handshake, HandshakeRefused

__all__ = ["ClusterBroker", "ClusterRooms"]

log = Logger()

_Client = TypeVar("_Client")

#: Heartbeats a node may miss before the others forget it (checked 8 times a heartbeat: within 2 in all).
SILENCE = 1.5
#: Heartbeats a node's note that the others forgot it waits for that node to read it (after a cut from Redis).
FORGOT_MEMORY = 60
#: The close code and reason of a client whose node learns that the cluster forgot it.
CUT_OFF = (1012, "this node was cut off from the cluster; reconnect")
#: The close code and reason of a forwarded client whose ``new_connection`` Redis delivered to no node.
LOST_START = (1012, "the cluster lost the start of this connection; reconnect")
#: The close code and reason of a client whose id another node claimed while this node's claim had expired.
TAKEN = (1008, "client_id connected on another node")
#: Seconds a ``room_members`` request waits for the other nodes' members before answering with what it has.
QUERY_TIMEOUT = 2.0
#: The extension requests about one client, carried out by the node that holds the client.
_CLIENT_REQUESTS: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    extensions.DISCONNECT_CLIENT: extensions.close_params,
    extensions.JOIN_ROOM: extensions.membership_params,
    extensions.LEAVE_ROOM: extensions.membership_params,
    extensions.SET_METADATA: extensions.metadata_params,
}


class Channels:
    """The Redis channel and key names of one cluster (all prefixed by its name)."""

    def __init__(self, cluster_name: str) -> None:
        self.prefix = cluster_name.encode() + b":"
        #: Heartbeats and goodbyes of every node.
        self.nodes = self.prefix + b"nodes"
        #: Broadcasts.
        self.everyone = self.prefix + b"all"
        self._room = self.prefix + b"room:"
        self._client = self.prefix + b"client:"
        self._node = self.prefix + b"node:"

    def room(self, room_id: str) -> bytes:
        """The channel of a room's messages."""
        return self._room + room_id.encode()

    def client(self, client_id: str) -> bytes:
        """The channel of what is sent to one client."""
        return self._client + client_id.encode()

    def node(self, node: str) -> bytes:
        """The channel of what is meant for one node."""
        return self._node + node.encode()

    def node_key(self, node: str) -> bytes:
        """The key saying a node is alive (with an expiry)."""
        return self.prefix + b"alive:" + node.encode()

    def forgot_key(self, node: str) -> bytes:
        """The set of the nodes that forgot a node, for it to read when it hears Redis again."""
        return self.prefix + b"forgot:" + node.encode()

    def claim(self, client_id: str) -> bytes:
        """The key naming the node that holds a client id (with an expiry)."""
        return self.prefix + b"claim:" + client_id.encode()

    def room_of(self, channel: bytes) -> str | None:
        """The room of a room channel; None for any other channel."""
        return channel[len(self._room):].decode() if channel.startswith(self._room) else None

    def client_of(self, channel: bytes) -> str | None:
        """The client of a client channel; None for any other channel."""
        return channel[len(self._client):].decode() if channel.startswith(self._client) else None


class ClusterRooms(Rooms[_Client]):
    """:class:`~pystrands.broker.rooms.Rooms` that keeps the node subscribed to its rooms' and clients' channels."""

    def __init__(self, link: Link, channels: Channels, claims: Claims) -> None:
        super().__init__()
        self._link = link
        self._channels = channels
        self._claims = claims
        #: The clients accepted here whose upgrade is under way: client id -> its first room.
        self._arriving: dict[str, str] = {}
        #: How many of them are on their way into each room (the rooms kept watched for them).
        self._arrivals: dict[str, int] = {}

    def arriving(self, client_id: str, room_id: str) -> None:
        """A client accepted into ``room_id``, its upgrade under way: watch its channel and its room's from
        now on (until it connects or goes), so that what a backend sends in answer to its ``new_connection``
        reaches it."""
        self._arriving[client_id] = room_id
        self._arrivals[room_id] = self._arrivals.get(room_id, 0) + 1
        self._link.watch(self._channels.client(client_id))
        self._link.watch(self._channels.room(room_id))

    def release(self, client_id: str) -> None:
        """Give back the id of a handshake that did not complete, and the channels watched for it."""
        super().release(client_id)
        room_id = self._arrived(client_id)
        if room_id is not None:
            self._link.unwatch(self._channels.client(client_id))
            self.vacated(room_id)

    def add(self, client_id: str, room_id: str, client: _Client) -> None:
        """Connect a client: watch its channel and its room's."""
        self._arrived(client_id)
        super().add(client_id, room_id, client)
        self._link.watch(self._channels.client(client_id))
        self._link.watch(self._channels.room(room_id))

    def remove(self, client_id: str) -> None:
        """Forget a client: let its id go, stop watching its channel and the rooms it leaves empty here."""
        rooms = self.rooms_of(client_id)
        connected = self.client(client_id) is not None
        super().remove(client_id)
        if connected:
            self._claims.release(client_id)
            self._link.unwatch(self._channels.client(client_id))
        for room_id in rooms:
            self.vacated(room_id)

    def join(self, client_id: str, room_id: str) -> list[str] | None:
        """Put a client in a room, and watch the room's channel."""
        rooms = super().join(client_id, room_id)
        if rooms is not None:
            self._link.watch(self._channels.room(room_id))
        return rooms

    def leave(self, client_id: str, room_id: str) -> list[str] | None:
        """Take a client out of a room; stop watching it once empty here."""
        rooms = super().leave(client_id, room_id)
        if rooms is not None:
            self.vacated(room_id)
        return rooms

    def holds(self, client_id: str) -> bool:
        """True while this node has the client: connected, or accepted and its upgrade under way."""
        return client_id in self._reserved

    def won(self, client_id: str) -> bool:
        """True while this node has won the client's id in the cluster: connected, or its claim won (or not
        answered in time) and its upgrade under way. Reserved only, its claim may still lose to another node."""
        return self.client(client_id) is not None or client_id in self._arriving

    def vacated(self, room_id: str) -> None:
        """Stop watching a room's channel if the room has no member here, nor a client on its way into it."""
        if not self.occupied(room_id) and room_id not in self._arrivals:
            self._link.unwatch(self._channels.room(room_id))

    def _arrived(self, client_id: str) -> str | None:
        """A client's upgrade is over (connected, or given up): the room it was on its way into, if it was."""
        room_id = self._arriving.pop(client_id, None)
        if room_id is not None:
            self._arrivals[room_id] -= 1
            if not self._arrivals[room_id]:
                del self._arrivals[room_id]
        return room_id


@dataclass
class _Forwarded:
    """A handshake of a client here, judged by a backend of another node."""

    answer: Deferred[Admission]
    node: str
    timeout: IDelayedCall


@dataclass
class _Query:
    """A ``room_members`` request waiting for the other nodes' members."""

    answer: Deferred[list[dict[str, Any]]]
    members: list[dict[str, Any]]
    timeout: IDelayedCall
    expected: int | None = None
    replies: int = 0
    nodes: set[str] = field(default_factory=set)


class ClusterBroker(Broker):
    """The router of one node of a cluster (see the module docstring)."""

    def __init__(self, config: BrokerConfig, clock: IReactorTime, link: LinkFactory = RedisLink) -> None:
        if config.redis is None:
            raise ValueError("a cluster node needs the redis setting (the URL of the cluster's Redis)")
        #: This node's id, fresh at each start.
        self.node = uuid.uuid4().hex[:16]
        self.channels = Channels(config.cluster_name)
        #: The two connections to Redis (``link`` makes them: the Clock tests give an in-memory stand-in).
        self.link = link(clock, parse_redis_url(config.redis), self._received, self._redis_state,
                         config.cluster_heartbeat)
        #: The other nodes.
        self.peers = Peers(clock, SILENCE * config.cluster_heartbeat)
        self._password_shown = password_on_command_line(config.redis, sys.argv)
        #: Milliseconds a node's key and its clients' claims live without a heartbeat renewing them.
        self._expiry = int(2 * config.cluster_heartbeat * 1000)
        self.claims = Claims(self.link, self.channels.claim, self.node, self._expiry)
        #: Events held, as (origin node, client id, frame, final): of this node's forwarded clients whose node
        #: is unconfirmed (Redis just came back), until it beats or is forgotten; of other nodes' clients,
        #: forwarded here as this node's last backend left, until a node (this one included) has one.
        self._held: EventQueue[tuple[str, str | None, bytes, bool]] = EventQueue(config.queue_size)
        super().__init__(config, clock)  # after the above: its metrics registry reads them at once
        self.rooms: ClusterRooms[Client] = ClusterRooms(self.link, self.channels, self.claims)
        #: Clients here whose events go to another node's backends: client id -> node.
        self._forwarded: dict[str, str] = {}
        #: Forwarded clients closed (or, not upgraded yet, refused) because the cluster forgot this node, or their
        #: new_connection reached no node: their backends had their goodbye, or never knew them.
        self._disowned: set[str] = set()
        self._handshakes: dict[str, _Forwarded] = {}
        #: Clients of other nodes whose events our backends get: node -> client id -> the context of its latest
        #: event (its goodbye's, if that node goes), None while it had none (accepted here, not connected yet).
        self._guests: dict[str, dict[str, dict[str, Any] | None]] = {}
        self._queries: dict[str, _Query] = {}
        self._asks: dict[str, tuple[Deferred[bool], IDelayedCall]] = {}
        #: Answers (``done``) to other nodes' requests that Redis lost (with this node's connection, or the asking
        #: node's): node -> (when, payload), published again when the two hear each other again, if the asker
        #: still waits (QUERY_TIMEOUT).
        self._undone: dict[str, list[tuple[float, bytes]]] = {}
        #: Nodes heard again before this node rejoined: told ``keep`` (and sent what ``_undone`` holds for them)
        #: once it has, after the events it held.
        self._owed_keep: set[str] = set()
        self._timers: list[IDelayedCall] = []
        #: True once this node's answer beat went out since it (re)connected to Redis. Until then it neither
        #: beats nor forwards: a node that hears it has been asked to beat, and its beat comes before what it sends.
        self._joined = False
        #: When the other nodes' silence was last checked (a later check than due: this node stalled).
        self._checked = 0.0
        self._unpublished_reported = 0
        self._rejected_reported = 0
        #: The largest cluster message: an event of the largest line, each of its bytes escaped once in JSON.
        self._payload_limit = 2 * self._event_limit + 1024
        self._own_starts = cluster_wire.starts_of(self.node)

    # -- life cycle ------------------------------------------------------

    def start(self) -> None:
        """Start the backends' heartbeats, connect to Redis, and beat in the cluster."""
        super().start()
        self.link.watch(self.channels.nodes)
        self.link.watch(self.channels.everyone)
        self.link.watch(self.channels.node(self.node))
        self.link.start()
        self._every(self.config.cluster_heartbeat, self._beat)
        self._every(self.config.cluster_heartbeat, self._renew_claims)
        self._checked = self.clock.seconds()
        self._every(self.config.cluster_heartbeat / 8, self._check_peers)
        self._every(self.config.cluster_heartbeat, lambda: self.link.probe(self.config.cluster_heartbeat))
        log.info("Cluster node {node} of cluster {name} on {redis}", node=self.node,
                 name=self.config.cluster_name, redis=str(self.link.address))
        if self._password_shown:
            log.warn(PASSWORD_SHOWN)

    def stop(self) -> None:
        """Stop beating; handshakes waiting for another node get 503."""
        super().stop()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        self._refuse_judged_by(None, "the broker is stopping")

    def shutdown(self) -> Deferred[None]:
        """Say goodbye to the cluster, then close the connections to Redis.

        Redis answers in order: once the last command is answered, every publish before it has
        been confirmed, so none is counted lost by the closing (an unresponsive Redis gets
        ``CLOSE_TIMEOUT`` seconds).
        """
        self.link.fire(b"PUBLISH", self.channels.nodes, cluster_wire.encode("bye", self.node))
        last = self.link.command(b"DEL", self.channels.node_key(self.node))
        if last is None:
            return self.link.stop()
        last.addTimeout(CLOSE_TIMEOUT, self.clock)
        return last.addBoth(lambda _: self.link.stop())

    def _every(self, seconds: float, action: Callable[[], object]) -> None:
        """Call ``action`` every ``seconds`` until :meth:`stop` (callLater: no global reactor)."""
        def tick() -> None:
            self._timers[index] = self.clock.callLater(seconds, tick)
            action()

        index = len(self._timers)
        self._timers.append(self.clock.callLater(seconds, tick))

    @property
    def ready(self) -> bool:
        """A backend here, or on a node this one can reach: a load balancer may send it clients."""
        return bool(self.backends) or (self._joined and bool(self.peers.with_backends()))

    @property
    def unready_reason(self) -> str:
        """Why :attr:`ready` is False: no backend anywhere, or none here and no way to the others."""
        if not self._joined:
            return "no backend is connected here, and the cluster's Redis is not reachable (yet)"
        return "no backend is connected to any node of the cluster"

    def cluster_gauges(self) -> dict[str, tuple[str, float]]:
        """Redis up, the other nodes, those with a backend, the events held for nodes unconfirmed."""
        return {"cluster_redis_up": ("1 while both connections to Redis are up.", float(self.link.up)),
                "cluster_nodes": ("Other nodes of the cluster heard from.", float(len(self.peers))),
                "cluster_nodes_with_backends": ("Other nodes with a backend.", float(len(self.peers.with_backends()))),
                "cluster_held_events": ("Events of clients held for their node, not heard since Redis came back.",
                                        float(len(self._held)))}

    # -- Redis ----------------------------------------------------------------

    def _redis_state(self, up: bool, why: str) -> None:
        """Redis lost: the handshakes waiting for another node's verdict get 503 (a verdict published while
        this node is not subscribed is lost; one that comes late is answered with ``abandon``). Redis back:
        rejoin the cluster."""
        if not up:
            log.warn("Cluster node {node}: Redis {redis} is unreachable ({why}); serving this node's"
                     " clients alone, reconnecting", node=self.node, redis=str(self.link.address), why=why)
            self._joined = False
            self._owed_keep.clear()  # the nodes heard over the broken connection are owed it again once heard again
            self._refuse_judged_by(None, "the cluster's Redis connection broke while the handshake was judged;"
                                         " try again")
            return
        log.info("Cluster node {node}: connected to Redis {redis}", node=self.node, redis=str(self.link.address))
        self._report_losses()
        self.peers.respite()
        self._renew_claims()
        # Not longer than half a heartbeat (Redis confirms the nodes' channels first; on a busy node other
        # subscriptions may always be waiting): until it rejoins, this node does not beat.
        settled = self.link.settled().addTimeout(self.config.cluster_heartbeat / 2, self.clock)
        settled.addBoth(lambda _: self._rejoin())

    def _rejoin(self) -> None:
        """Subscribed again (so no ``forgot`` note nor answer can be missed from now on; or half a heartbeat
        passed): read which nodes forgot this one meanwhile and act on it, then ask every node to beat (events
        held go on then). It rejoins whatever acting on it does: else it would never beat again."""
        asked = self.link.command(b"SMEMBERS", self.channels.forgot_key(self.node)) if self.link.up else None
        if asked is not None:
            asked.addCallbacks(self._read_forgetters, lambda _: None).addErrback(
                lambda failure: log.failure("Cluster node {node}: acting on the nodes that forgot it failed",
                                            failure, node=self.node)).addCallback(
                lambda _: self._announce() if self.link.up else None)

    def _announce(self) -> None:
        """Ask every node to beat (the answer beat, with this node's backends), then forward what waited for it."""
        self._joined = True
        self._beat(answer=True)
        self._flush_held()
        owed, self._owed_keep = self._owed_keep, set()
        for node in sorted(owed):
            if node in self.peers and not self.peers.unconfirmed(node):  # else after its held events, when heard
                self._heard_again(node)
        self._flush_queue()

    def _publish(self, channel: bytes, payload: bytes) -> Deferred[int | None] | None:
        """Publish: fires with the subscribers that got it (None if lost: counted); None (counted,
        logged once an outage) when it cannot be sent."""
        published = self.link.publish(channel, payload)
        if published is None:
            self._unpublished()
            return None
        return published.addErrback(lambda _: self._unpublished())

    def _unpublished(self) -> None:
        if self.metrics.cluster_unpublished == self._unpublished_reported:
            log.warn("Cluster node {node}: a message for other nodes could not be published to Redis;"
                     " counting such losses in dropped_total{{reason=\"cluster_unpublished\"}} until Redis"
                     " is back", node=self.node)
        self.metrics.cluster_unpublished += 1

    def _report_losses(self) -> None:
        lost = self.metrics.cluster_unpublished - self._unpublished_reported
        if lost:
            self._unpublished_reported = self.metrics.cluster_unpublished
            log.warn("Cluster node {node}: {lost} messages for other nodes could not be published while Redis"
                     " was unreachable ({total} since start)", node=self.node, lost=lost,
                     total=self.metrics.cluster_unpublished)

    def _received(self, channel: bytes, payload: bytes) -> None:
        """A message on a watched channel: act on it; skip (and count) whatever is not a cluster message."""
        if payload.startswith(self._own_starts):
            return  # this node's own publish, back on a channel it watches (a room it has members of)
        try:
            if len(payload) > self._payload_limit:
                raise ClusterWireError(f"over {self._payload_limit} bytes")
            kind, origin, fields = cluster_wire.decode(payload)
            if origin == self.node:
                return
            _HANDLERS[kind](self, channel, origin, *fields)
        except (ClusterWireError, UnicodeDecodeError, extensions.BadParams) as exc:
            self._rejected(channel, payload, str(exc))
        except Exception:
            self.metrics.cluster_rejected += 1
            log.failure("Cluster node {node}: acting on a message on {channel!r} failed: {excerpt}",
                        node=self.node, channel=channel, excerpt=wire.excerpt(payload))

    def _rejected(self, channel: bytes, payload: bytes, why: str) -> None:
        self.metrics.cluster_rejected += 1
        count = self.metrics.cluster_rejected
        if count - self._rejected_reported >= 1000 or self._rejected_reported == 0 or count == 1:
            self._rejected_reported = count
            log.warn("Cluster node {node}: skipped a payload on {channel!r} that is not a cluster message ({why}):"
                     " {excerpt} ({count} so far; logged again after 1000 more)", node=self.node,
                     channel=channel, why=why, excerpt=wire.excerpt(payload), count=count)

    # -- heartbeats ---------------------------------------------------------------

    def _beat(self, answer: bool = False) -> None:
        """Say this node is alive and how many backends it has; ``answer``: the others beat back now.
        Not before the answer beat after a (re)connection (see ``_joined``)."""
        if not (self._joined or answer):
            return
        self.link.fire(b"SET", self.channels.node_key(self.node), str(len(self.backends)).encode(),
                       b"PX", self._expiry)
        # Not counted when unpublished: a heartbeat is no message, and the next one says the same.
        self.link.fire(b"PUBLISH", self.channels.nodes,
                       cluster_wire.encode("beat", self.node, len(self.backends), answer))

    def _renew_claims(self) -> None:
        """Renew the claims of this node's clients (made again if lost: a Redis restarted without
        persistence); close those whose id another node claimed meanwhile."""
        self.claims.renew([client.admission.client_id for client in self.rooms.everyone()]).addCallback(self._taken)

    def _taken(self, client_ids: list[str]) -> None:
        """Another node holds these ids (claimed while this node's claims had expired: it was cut off
        from Redis or stalled): this node's clients of those ids are closed, one id being one client."""
        for client_id in client_ids:
            client = self.rooms.client(client_id)
            if client is not None:
                log.warn("Cluster node {node}: closing WebSocket client {client_id!r}: another node claimed its"
                         " id while this node's claim had expired", node=self.node, client_id=client_id)
                client.close(*TAKEN)

    def _check_peers(self) -> None:
        """Forget the nodes silent for SILENCE heartbeats (8 checks a heartbeat)."""
        now, interval = self.clock.seconds(), self.config.cluster_heartbeat / 8
        late, self._checked = now - self._checked - interval, now
        if late > interval:
            # This node's loop stalled: the overdue timers run before its sockets are read, so the beats
            # heard meanwhile are still unread. The others get the time it lost; the next check judges.
            self.peers.extend(late)
            return
        if not self.link.up:
            return  # this node hears no one: silence says nothing about the others
        for node in self.peers.silent():
            log.warn("Cluster node {node}: node {peer} fell silent; forgotten", node=self.node, peer=node)
            self._gone(node)
            # It may be alive, cut off or stalled: it learns it now, or from the key once it hears Redis again.
            key = self.channels.forgot_key(node)
            self.link.fire(b"SADD", key, self.node.encode())
            self.link.fire(b"PEXPIRE", key, FORGOT_MEMORY * self._expiry // 2)
            self.link.fire(b"PUBLISH", self.channels.nodes, cluster_wire.encode("forgot", self.node, node))

    def _on_beat(self, channel: bytes, origin: str, backends: int, answer: bool) -> None:
        if channel != self.channels.nodes or backends < 0:
            raise ClusterWireError("a heartbeat off the nodes channel, or with a negative count")
        unconfirmed = self.peers.unconfirmed(origin)
        before = self.peers.heard(origin, backends, answer)
        confirmed = unconfirmed and not self.peers.unconfirmed(origin)
        if before is None:
            log.info("Cluster node {node}: node {peer} joined ({backends} backend{s})", node=self.node,
                     peer=origin, backends=backends, s="" if backends == 1 else "s")
        if answer:
            # It is back on Redis: while it was not, a handshake for it or its verdict may have been lost.
            self._refuse_judged_by({origin}, "the node judging the handshake lost its connection to Redis"
                                             " meanwhile; try again")
            self._beat()
        lost_backends = not backends and bool(before)
        if lost_backends:
            self._unstick(origin, alive=True)
        if confirmed or lost_backends or (backends and not before):
            self._flush_held()
        if before is not None and (answer or confirmed):
            if self._joined:
                self._heard_again(origin)  # after the held events: a goodbye among them went first
            else:
                self._owed_keep.add(origin)  # this node's held events are still held: after them, at _announce
        if backends and (not before or confirmed):
            self._flush_queue()

    def _on_forgot(self, channel: bytes, origin: str, node: str) -> None:
        if channel != self.channels.nodes:
            raise ClusterWireError("a note of a forgotten node off the nodes channel")
        if node == self.node:
            self._from_peer(origin, "a note that this node was forgotten")
            self.link.fire(b"SREM", self.channels.forgot_key(self.node), origin.encode())
            self._forgotten({origin})

    def _read_forgetters(self, members: Any) -> None:
        """The nodes that forgot this one while it could not hear them (SMEMBERS), taken out of the set."""
        forgetters = {member.decode() for member in members} if isinstance(members, (list, set)) else set()
        if forgetters:
            self.link.fire(b"SREM", self.channels.forgot_key(self.node), *sorted(node.encode() for node in forgetters))
            self._forgotten(forgetters)

    def _forgotten(self, by: set[str]) -> None:
        """The nodes ``by`` forgot this one (silent too long: cut off from Redis, or stalled). They gave
        their backends a goodbye for its clients forwarded there and moved their own clients off its
        backends; so those clients of its own are closed (1012: they reconnect, and start again with a
        backend) or, not upgraded yet, refused (503, by :meth:`_upgrading`), and its backends get a goodbye
        for those nodes' clients."""
        served = [client_id for client_id, node in self._forwarded.items() if node in by]
        log.warn("Cluster node {node}: nodes {by} forgot this node while it was silent; closing its {count} clients"
                 " served by their backends, and letting go of their clients", node=self.node,
                 by=", ".join(sorted(by)), count=len(served))
        self._beat()  # first: they know this node again before anything it publishes next reaches them
        for client_id in served:
            del self._forwarded[client_id]
            if self.rooms.holds(client_id):  # else gone already, its goodbye lost from the held events
                self._disowned.add(client_id)
            client = self.rooms.client(client_id)
            if client is not None:
                client.close(*CUT_OFF)
        self._refuse_judged_by(by, "the node judging the handshake had lost sight of this one; try again")
        for origin in by:
            self._let_guests_go(origin)
        self._flush_held()

    def _on_bye(self, channel: bytes, origin: str) -> None:
        if channel != self.channels.nodes:
            raise ClusterWireError("a goodbye off the nodes channel")
        if self.peers.forget(origin):
            log.info("Cluster node {node}: node {peer} left", node=self.node, peer=origin)
            self._gone(origin)

    def _gone(self, node: str) -> None:
        """A node is gone: no more forwarding to it; its clients leave our backends; its handshakes get 503."""
        self._unstick(node, alive=False)
        self._undone.pop(node, None)
        self._refuse_judged_by({node}, "the node of the backend judging the handshake went away")
        self._let_guests_go(node)
        self._flush_held()

    def _refuse_judged_by(self, nodes: set[str] | None, reason: str) -> None:
        """503 to the handshakes waiting for a verdict from ``nodes`` (None: from any node): it will not come."""
        for request_id in [rid for rid, pending in self._handshakes.items() if nodes is None or pending.node in nodes]:
            self._refuse_forwarded(request_id, 503, reason)

    def _let_guests_go(self, origin: str) -> None:
        """The clients of ``origin`` served here leave this node's backends."""
        for client_id in list(self._guests.get(origin, ())):
            self._let_guest_go(origin, client_id)
        self._guests.pop(origin, None)

    def _let_guest_go(self, origin: str, client_id: str) -> None:
        """A client of ``origin`` leaves this node's backends: ``disconnected`` (with the context of its latest
        event), or nothing but its backend's load if it never connected (its backend never knew it)."""
        context = self._guests[origin].pop(client_id)
        if context is None:
            self._unassign(client_id)
        else:
            Broker._route(self, client_id, wire.encode_frame(wire.DISCONNECTED, {"context": context}), True)

    def _unstick(self, node: str, alive: bool) -> None:
        """The clients forwarded to ``node`` move at their next event; a node still ``alive`` is told
        to forget them (else, when this node goes, it would give its backends a second goodbye)."""
        for client_id in [cid for cid, owner in self._forwarded.items() if owner == node]:
            del self._forwarded[client_id]
            if alive:
                self._tell_abandon(node, client_id)

    def _tell_abandon(self, node: str, client_id: str) -> None:
        """Tell ``node`` that this node's client no longer goes to its backends (they forget it, no goodbye)."""
        self._send_to(node, cluster_wire.encode("abandon", self.node, client_id))

    def _heard_again(self, node: str) -> None:
        """``node`` and this one hear each other again after either could not hear Redis: tell it which clients
        this node still has there (``keep``), and the answers to its requests it may not have heard."""
        self._tell_keep(node)
        now = self.clock.seconds()
        for when, payload in self._undone.pop(node, []):
            if now - when < QUERY_TIMEOUT:
                self._tell_done(node, payload)

    def _tell_keep(self, node: str) -> None:
        """Tell ``node``, heard again after either of the two could not hear Redis, which of this node's clients
        whose events go there it still has: those forwarded there, and those forwarded nowhere now whose next
        event goes there (an event of theirs may have reached it relayed by a node whose last backend left).
        It lets the others go (their goodbye or ``abandon`` may have been lost). Those forwarded there that
        are gone are forgotten here too (a goodbye of theirs may have been pushed out of the held events)."""
        kept = []
        for client_id in [cid for cid, owner in self._forwarded.items() if owner == node]:
            if self.rooms.holds(client_id):
                kept.append(client_id)
            else:
                del self._forwarded[client_id]
        for client in self.rooms.everyone():
            client_id = client.admission.client_id
            if client_id not in self._forwarded and client_id not in self._disowned and self._target(client_id) == node:
                kept.append(client_id)
        self._send_to(node, cluster_wire.encode("keep", self.node, kept))

    def _on_keep(self, channel: bytes, origin: str, client_ids: list[Any]) -> None:
        self._own_channel(channel)
        if not all(isinstance(client_id, str) for client_id in client_ids):
            raise ClusterWireError("a list of the clients a node keeps that are not all ids")
        self._from_peer(origin, "a list of the clients a node keeps")
        kept = set(client_ids)
        for client_id in [cid for cid in self._guests.get(origin, ()) if cid not in kept]:
            self._let_guest_go(origin, client_id)

    # -- backends ---------------------------------------------------------------

    def backend_ready(self, backend: BackendLink) -> None:
        """A backend here: the others learn it at once; events held for a backend go to it."""
        super().backend_ready(backend)
        self._flush_held()
        self._beat()

    def backend_lost(self, backend: BackendLink) -> None:
        """A backend gone: the others learn it at once."""
        had = backend in self.backends
        super().backend_lost(backend)
        if had:
            self._beat()
            self._flush_queue()  # what waits here for a backend goes to another node's, if this was the last

    def backend_frame(self, frame: wire.Frame, line: bytes, backend: BackendLink) -> None:
        """As one node, then publish what reaches clients of other nodes."""
        action, params = frame.action, frame.params
        if action == wire.MESSAGE_TO_CONNECTION:
            conn_id, message = params.get("conn_id"), params.get("message")
            if isinstance(conn_id, str) and isinstance(message, str) and self.rooms.client(conn_id) is None:
                self._publish(self.channels.client(conn_id), cluster_wire.encode("to", self.node, message))
                return
        super().backend_frame(frame, line, backend)
        if action == wire.MESSAGE_TO_ROOM:
            room_id, message = params.get("room_id"), params.get("message")
            if isinstance(room_id, str) and isinstance(message, str):
                self._publish(self.channels.room(room_id), cluster_wire.encode("room", self.node, message))
        elif action == wire.BROADCAST:
            message = params.get("message")
            if isinstance(message, str):
                self._publish(self.channels.everyone, cluster_wire.encode("all", self.node, message))

    # -- sends from other nodes' backends -------------------------------------------

    def _on_room(self, channel: bytes, origin: str, message: str) -> None:
        room_id = self._room_channel(channel)
        members = self.rooms.members(room_id)
        for client in members:
            client.send_text(message)
        self.metrics.sent_room += len(members)

    def _on_all(self, channel: bytes, origin: str, message: str) -> None:
        if channel != self.channels.everyone:
            raise ClusterWireError("a broadcast off the cluster's channel")
        everyone = self.rooms.everyone()
        for client in everyone:
            client.send_text(message)
        self.metrics.sent_broadcast += len(everyone)

    def _on_to(self, channel: bytes, origin: str, message: str) -> None:
        target = self.rooms.client(self._client_channel(channel))
        if target is not None:
            target.send_text(message)
            self.metrics.sent_connection += 1

    def _room_channel(self, channel: bytes) -> str:
        room_id = self.channels.room_of(channel)
        if room_id is None:
            raise ClusterWireError("a room message off a room channel")
        return room_id

    def _client_channel(self, channel: bytes) -> str:
        client_id = self.channels.client_of(channel)
        if client_id is None:
            raise ClusterWireError("a client message off a client channel")
        return client_id

    def _own_channel(self, channel: bytes) -> None:
        if channel != self.channels.node(self.node):
            raise ClusterWireError("a node's message off that node's channel")

    def _from_peer(self, origin: str, what: str) -> None:
        """ClusterWireError unless ``origin`` is a node heard beating (its beat is published before what it sends)."""
        if origin not in self.peers:
            raise ClusterWireError(f"{what} from {origin!r}, a node not heard from")

    # -- extension requests, cluster-wide ---------------------------------------------

    def _room_members(self, params: dict[str, Any]) -> Any:
        """This node's members at once, then the other nodes' (those subscribed to the room answer)."""
        members = super()._room_members(params)
        room_id = extensions.room_params(params)
        query_id = uuid.uuid4().hex
        answer: Deferred[list[dict[str, Any]]] = Deferred()
        self._queries[query_id] = _Query(answer, members, self.clock.callLater(
            QUERY_TIMEOUT, self._end_query, query_id, True))
        # Half the query's time at most: on a busy node some subscription may always be waiting.
        settled = self.link.settled().addTimeout(QUERY_TIMEOUT / 2, self.clock)
        settled.addCallbacks(lambda _: self._ask_members(query_id, room_id, True),
                             lambda _: self._ask_members(query_id, room_id, False))
        return answer

    def _ask_members(self, query_id: str, room_id: str, settled: bool) -> None:
        """Publish a ``room_members`` question. Once Redis has answered this node's (un)subscriptions
        (``settled``), the count of nodes it reaches includes this one exactly when this node watches the
        room (with a member here, or a handshake into the room under way), and this node answers not its own
        question: the query ends with the last answer. Else whether Redis counted this node is unknown: the
        query takes the answers that come until its time is up."""
        if query_id not in self._queries:
            return  # timed out meanwhile
        published = self._publish(self.channels.room(room_id), cluster_wire.encode("who", self.node, query_id))
        if published is None:
            self._end_query(query_id, False)  # Redis unreachable: this node's members are all it can know
            return
        if not settled:
            return
        own = 1 if self.link.watching(self.channels.room(room_id)) else 0
        published.addCallback(lambda count: self._end_query(query_id, True) if count is None
                              else self._expect(query_id, count - own))

    def _expect(self, query_id: str, replies: int) -> None:
        query = self._queries.get(query_id)
        if query is not None:
            query.expected = replies
            if query.replies >= replies:
                self._end_query(query_id, False)

    def _on_who(self, channel: bytes, origin: str, query_id: str) -> None:
        room_id = self._room_channel(channel)
        members = [client.admission.context for client in self.rooms.members(room_id)]
        self._send_to(origin, cluster_wire.encode("members", self.node, query_id, members))

    def _on_members(self, channel: bytes, origin: str, query_id: str, members: list[Any]) -> None:
        self._own_channel(channel)
        query = self._queries.get(query_id)
        if query is None or origin in query.nodes:
            return
        query.nodes.add(origin)
        query.replies += 1
        query.members.extend(member for member in members if isinstance(member, dict))
        if query.expected is not None and query.replies >= query.expected:
            self._end_query(query_id, False)

    def _end_query(self, query_id: str, late: bool) -> None:
        query = self._queries.pop(query_id, None)
        if query is None:
            return
        if late:
            log.warn("Cluster node {node}: room_members answered after {seconds}s with the members of {count} other"
                     " nodes: others did not answer, or Redis had not confirmed this node's subscriptions (so how"
                     " many would answer was unknown)", node=self.node, count=query.replies, seconds=QUERY_TIMEOUT)
        elif query.timeout.active():
            query.timeout.cancel()
        query.answer.callback(query.members)

    def _disconnect_client(self, params: dict[str, Any]) -> Any:
        return self._client_request(extensions.DISCONNECT_CLIENT, params) or super()._disconnect_client(params)

    def _join_room(self, params: dict[str, Any]) -> Any:
        return self._client_request(extensions.JOIN_ROOM, params) or super()._join_room(params)

    def _leave_room(self, params: dict[str, Any]) -> Any:
        return self._client_request(extensions.LEAVE_ROOM, params) or super()._leave_room(params)

    def _set_metadata(self, params: dict[str, Any]) -> Any:
        return self._client_request(extensions.SET_METADATA, params) or super()._set_metadata(params)

    def _client_request(self, action: str, params: dict[str, Any]) -> Deferred[bool] | None:
        """For a client of another node: ask the node that holds it, whose answer comes once the
        request is in effect there (false at once if no node holds it). None: do it here, for a client
        whose id this node won, connected or with its upgrade under way (then no other node holds it, and
        this one would wait for its own answer); not for one only reserved, whose claim may lose."""
        client_id = _CLIENT_REQUESTS[action](params)[0]
        if self.rooms.won(client_id):
            return None
        request_id = uuid.uuid4().hex
        published = self.link.publish(self.channels.client(client_id),
                                      cluster_wire.encode("ask", self.node, request_id, action, params))
        if published is None:
            self._unpublished()
            raise extensions.BadParams("the client is not on this node, and Redis (the other nodes) is unreachable")
        answer: Deferred[bool] = Deferred()
        self._asks[request_id] = (answer, self.clock.callLater(QUERY_TIMEOUT, self._asked, request_id, None))
        published.addCallbacks(lambda count: None if count else self._asked(request_id, False),
                               lambda _: self._asked(request_id, None))
        return answer

    def _asked(self, request_id: str, result: bool | None) -> None:
        """The end of a request about a client of another node: its result, or None (no answer)."""
        asked = self._asks.pop(request_id, None)
        if asked is None:
            return
        answer, timeout = asked
        if timeout.active():
            timeout.cancel()
        if result is None:
            answer.errback(extensions.BadParams("the node holding the client did not answer in time"))
        else:
            answer.callback(result)

    def _on_ask(self, channel: bytes, origin: str, request_id: str, action: str, params: dict[str, Any]) -> None:
        check = _CLIENT_REQUESTS.get(action)
        if check is None or check(params)[0] != self._client_channel(channel):
            raise ClusterWireError(f"a {action!r} request not about the channel's client")
        result = bool(getattr(Broker, "_" + action)(self, params))
        done = cluster_wire.encode("done", self.node, request_id, result)
        if action != extensions.JOIN_ROOM:
            self._tell_done(origin, done)  # in effect now (a channel unsubscribed only drops messages)
            return
        # A room joined is in effect once its channel is subscribed: what is sent to it then reaches the client.
        # Half the asker's time at most: on a busy node some subscription may always be waiting.
        settled = self.link.settled().addTimeout(QUERY_TIMEOUT / 2, self.clock)
        settled.addBoth(lambda _: self._tell_done(origin, done))

    def _tell_done(self, origin: str, payload: bytes) -> None:
        """Tell ``origin`` that its request is in effect here (``done``); if Redis loses it (with this node's
        connection, or ``origin``'s: no subscriber), again when the two hear each other again: the request
        was carried out, and an answer within the asker's QUERY_TIMEOUT beats one saying it was not."""
        published = self._send_to(origin, payload)
        if published is None:
            self._undo(origin, payload)
        else:
            published.addCallback(lambda count: None if count else self._undo(origin, payload))

    def _undo(self, origin: str, payload: bytes) -> None:
        self._undone.setdefault(origin, []).append((self.clock.seconds(), payload))

    def _on_done(self, channel: bytes, origin: str, request_id: str, result: bool) -> None:
        self._own_channel(channel)
        self._asked(request_id, result)

    # -- events of clients here, for backends of other nodes ---------------------------------

    def _target(self, client_id: str | None) -> str | None:
        """The node whose backends get this client's events, if not this one."""
        if self.backends or not self._joined:
            return None
        nodes = self.peers.with_backends()
        if not nodes:
            return None
        # The same choice on every node (hash() of a str differs between processes): a node relaying an
        # event of another node's client picks the node that the client's own node picks next.
        return nodes[zlib.crc32((client_id or "").encode()) % len(nodes)]

    def _route(self, client_id: str | None, frame: bytes, final: bool) -> BackendLink | None:
        """A client's event: to the node its events go to (sticky; held while that node is unconfirmed or
        this node has not rejoined since Redis came back), else to a node with a backend when there is none
        here, else as one node."""
        if client_id is not None:
            if client_id in self._disowned:  # closed as the cluster forgot this node: its goodbye was given
                if final:
                    self._disowned.discard(client_id)
                return None
            node = self._forwarded.get(client_id)
            if node is not None:
                if not self._joined or self.peers.unconfirmed(node):
                    self._hold(self.node, client_id, frame, final)
                    return None
                if self.peers.backends(node):
                    if final:
                        del self._forwarded[client_id]
                    self._forward(node, self.node, client_id, frame, final)
                    return None
                del self._forwarded[client_id]  # its node went (one left without backends is unstuck at its beat)
        node = self._target(client_id)
        if node is None:
            return super()._route(client_id, frame, final)
        if client_id is not None and not final:
            self._forwarded[client_id] = node
        self._forward(node, self.node, client_id, frame, final)
        return None

    def _forward(self, node: str, origin: str, client_id: str | None, frame: bytes, final: bool) -> None:
        """A client's event to ``node``'s backends, as a client of ``origin`` (the node that holds it)."""
        published = self._send_to(node, cluster_wire.encode("event", origin, client_id, final, frame.decode()))
        if published is not None and origin == self.node and client_id is not None and not final:
            published.addCallback(self._event_heard, client_id, frame)

    def _event_heard(self, subscribers: int | None, client_id: str, frame: bytes) -> None:
        """A client's ``new_connection`` that Redis delivered to no node: its backend never knew the client,
        and would get its next events. The client is closed (1012) to start again; its events until it is gone
        are dropped, and its backend lets it go at this node's ``keep``, which no longer lists it."""
        client = self.rooms.client(client_id)
        if (subscribers != 0 or client is None or client_id in self._disowned
                or wire.decode_frame(frame.rstrip(b"\n")).action != wire.NEW_CONNECTION):
            return
        log.warn("Cluster node {node}: closing WebSocket client {client_id!r}: its new_connection reached no"
                 " node (a Redis blip of its backend's node)", node=self.node, client_id=client_id)
        self._forwarded.pop(client_id, None)
        self._disowned.add(client_id)
        client.close(*LOST_START)

    def _send_to(self, node: str, payload: bytes) -> Deferred[int | None] | None:
        """Publish on ``node``'s channel: the count of subscribers that got it (see :meth:`_publish`). If no one
        got it (its connection to Redis broke), it is lost (counted) and ``node`` doubted: what follows for it is
        held until it is back (its answer beat, see :meth:`Peers.heard`), and then this node tells it which of
        its clients it still has (``keep``)."""
        published = self._publish(self.channels.node(node), payload)
        if published is not None:
            published.addCallback(self._check_heard, node)
        return published

    def _check_heard(self, subscribers: int | None, node: str) -> int | None:
        if subscribers == 0:
            self._unpublished()
            self.peers.doubt(node)
        return subscribers

    def _hold(self, origin: str, client_id: str | None, frame: bytes, final: bool) -> None:
        """Keep an event (see ``_held``); past ``queue_size``, the oldest is lost (counted)."""
        dropped = self._held.dropped
        self._held.put((origin, client_id, frame, final))
        if self._held.dropped > dropped:
            self._unpublished()

    def _flush_held(self) -> None:
        """The held events, routed again: this node's to their node now confirmed, or on to another one;
        other nodes' to a backend here or on a node that has one (those of a node gone are dropped)."""
        for origin, client_id, frame, final in list(self._held.drain()):
            if origin == self.node:
                self._route(client_id, frame, final)
            elif origin in self.peers:
                self._take(origin, client_id, frame, final, _check_event(client_id, final, frame))

    def _flush_queue(self) -> None:
        """Events queued while no backend was anywhere: to a node that has one now."""
        if self.backends or not self._joined or not self.peers.with_backends() or not len(self.queue):
            return
        log.info("Forwarding {count} queued events to other nodes' backends", count=len(self.queue))
        for client_id, frame, final in self.queue.drain():
            self._route(client_id, frame, final)

    def _on_event(self, channel: bytes, origin: str, client_id: str | None, final: bool, frame: str) -> None:
        self._own_channel(channel)
        self._from_peer(origin, "a forwarded event")
        line = frame.encode()
        if len(line) > self._event_limit:
            raise ClusterWireError(f"a forwarded event over the backends' line limit ({self._event_limit} bytes)")
        context = _check_event(client_id, final, line)
        if (self.backends and client_id is not None and not final and client_id not in self._guests.get(origin, {})
                and self._guests_full(origin)):
            raise ClusterWireError(f"a client forwarded by node {origin!r} past max_clients"
                                   f" ({self.config.max_clients}) of its clients here")
        self._take(origin, client_id, line, final, context)

    def _take(self, origin: str, client_id: str | None, line: bytes, final: bool, context: dict[str, Any]) -> None:
        """An event of a client of ``origin``: to a backend here (the client is ``origin``'s guest here,
        with the ``context`` of its latest event: its goodbye if ``origin`` goes). With none here (the
        last one left while the event was on its way), on to a node that has one, still as ``origin``'s
        client, for that node to give its backends the client's goodbye if ``origin`` goes; or held
        until a node has one. Lost (counted) if ``origin`` has a backend now: it serves its client's
        next events itself, and this one would leave the client on another node's books."""
        if not self.backends:
            if self.peers.backends(origin):
                self._unpublished()
                return
            node = self._target(client_id)
            if node is None:
                self._hold(origin, client_id, line, final)
            else:
                self._forward(node, origin, client_id, line, final)
            return
        if client_id is not None and not self._booked(origin, client_id, final, context):
            return
        Broker._route(self, client_id, line, final)

    def _booked(self, origin: str, client_id: str, final: bool, context: dict[str, Any]) -> bool:
        """Keep ``origin``'s client as its guest here, with the context of its latest event; at its last event,
        let it go. False (the event is not for a backend) for a last event of a client that is no guest here
        (let go already, when ``origin`` no longer listed it: its goodbye was given) or that never had an
        event here (its backend never knew it: only its load goes)."""
        guests = self._guests.setdefault(origin, {})
        if not final:
            guests[client_id] = context
            return True
        if client_id not in guests:
            return False
        if guests[client_id] is None:
            self._let_guest_go(origin, client_id)
            return False
        del guests[client_id]
        return True

    def _guests_full(self, origin: str) -> bool:
        """True if ``origin`` has as many clients here as a node may hold (``max_clients``)."""
        return len(self._guests.get(origin, ())) >= self.config.max_clients

    # -- handshakes judged on another node -------------------------------------------

    def request_connection(self, handshake: Handshake) -> Deferred[Admission]:
        """Ask a backend here, or one on another node when there is none here; then check that no
        other node holds a client with the accepted id."""
        request_id = uuid.uuid4().hex
        node = self._target(request_id)
        if node is None:
            return super().request_connection(handshake).addCallback(self._only_here)
        published = self._send_to(node, cluster_wire.encode("judge", self.node, request_id, handshake.params()))
        if published is None:
            self.metrics.handshake("unavailable")
            return fail(HandshakeRefused(503, "the cluster's Redis is unreachable"))
        answer: Deferred[Admission] = Deferred()
        timeout = self.clock.callLater(self.config.auth_timeout, self._refuse_forwarded, request_id, 403,
                                       "the backend did not answer in time")
        self._handshakes[request_id] = _Forwarded(answer, node, timeout)
        published.addCallback(self._judge_sent, request_id)
        return answer.addCallback(self._only_here)

    def _judge_sent(self, subscribers: int | None, request_id: str) -> None:
        """A forwarded handshake that no node got (its node no longer listens, or Redis lost it) gets 503
        now rather than waiting ``auth_timeout`` for a verdict that cannot come."""
        if not subscribers and request_id in self._handshakes:
            self._refuse_forwarded(request_id, 503, "the node of the backend judging the handshake is unreachable")

    def _only_here(self, admission: Admission) -> Deferred[Admission] | Admission:
        """Claim the client id in Redis (``SET NX``: of two nodes, one gets it), 409 if another node
        holds it; then subscribe to the client's and its room's channels before the upgrade, so that
        what a backend sends in answer to ``new_connection`` reaches the client.

        Without Redis, or if Redis does not answer within ``min(auth_timeout, 1 s)`` (each step: the
        claim, then the subscriptions), the node's own check (made before) is all; the heartbeats
        make the claim later.
        """
        asked = self.claims.take(admission.client_id)
        if asked is None:
            return admission
        deadline = min(self.config.auth_timeout, 1.0)

        def answered(reply: Any) -> Deferred[Admission]:
            if reply is None:  # Redis' answer when the key exists: another node holds the id
                log.warn("Refused a handshake: client_id {client_id!r} is connected to another node",
                         client_id=admission.client_id)
                self._let_go(admission)
                self.metrics.handshake_refused(409, timed_out=False)
                raise HandshakeRefused(409, "client_id already in use")
            self.rooms.arriving(admission.client_id, admission.room_id)
            settled = self.link.settled().addTimeout(deadline, self.clock)
            return settled.addErrback(lambda _: None).addCallback(lambda _: self._upgrading(admission))

        unanswered = b"unanswered"  # not None: Redis did not say the id is held
        return asked.addTimeout(deadline, self.clock).addErrback(lambda _: unanswered).addCallback(answered)

    def _upgrading(self, admission: Admission) -> Admission:
        """The admission, for the upgrade; 503 if the node whose backend judged it forgot this one meanwhile
        (that backend had the client's goodbye): the client tries again."""
        if admission.client_id in self._disowned:
            self.abandon(admission)
            self.metrics.handshake_refused(503, timed_out=False)
            raise HandshakeRefused(503, "the node judging the handshake had lost sight of this one; try again")
        return admission

    def _refuse_forwarded(self, request_id: str, status: int, reason: str) -> None:
        pending = self._handshakes.pop(request_id)
        timed_out = not pending.timeout.active()
        if not timed_out:
            pending.timeout.cancel()
        self.metrics.handshake_refused(status, timed_out=timed_out)
        pending.answer.errback(HandshakeRefused(status, reason))

    def _on_judge(self, channel: bytes, origin: str, request_id: str, params: dict[str, Any]) -> None:
        self._own_channel(channel)
        if params.keys() != _HANDSHAKE.keys() or any(not isinstance(params[key], kind)
                                                     for key, kind in _HANDSHAKE.items()):
            raise ClusterWireError("a forwarded handshake that is not a connection_request's params")
        self._from_peer(origin, "a forwarded handshake")
        if not self.backends or self._guests_full(origin):
            self._verdict(origin, request_id, 503, "no backend is connected" if not self.backends
                          else f"the judging node holds max_clients ({self.config.max_clients}) of this node's clients")
            return
        answer = self._ask_backend(params, reserve=False)
        answer.addCallbacks(self._judged, self._not_judged, (origin, request_id), errbackArgs=(origin, request_id))

    def _judged(self, admission: Admission, origin: str, request_id: str) -> None:
        """A backend here accepted a handshake of ``origin``'s: the client is its guest here, unless
        ``origin`` was forgotten meanwhile or no longer listens (no one will hear the verdict)."""
        client_id = admission.client_id
        if origin not in self.peers:
            self._unassign(client_id)
            return
        self._guests.setdefault(origin, {})[client_id] = None
        published = self._send_to(origin, cluster_wire.encode(
            "verdict", self.node, request_id, 200, "", client_id, admission.room_id, admission.metadata))
        if published is None:  # Redis unreachable: ``origin`` will not hear it
            self._drop_guest(origin, client_id)
        else:
            published.addCallback(self._verdict_heard, origin, client_id)

    def _verdict_heard(self, count: int | None, origin: str, client_id: str) -> None:
        if count == 0:  # no subscriber: ``origin`` lost its connection to Redis, and the verdict with it
            self._drop_guest(origin, client_id)

    def _drop_guest(self, origin: str, client_id: str) -> None:
        """``origin``'s client is no longer its guest here: its backend is free of it (no goodbye: it never came)."""
        guests = self._guests.get(origin, {})
        if client_id in guests:
            del guests[client_id]
            self._unassign(client_id)

    def _not_judged(self, failure: Any, origin: str, request_id: str) -> None:
        failure.trap(HandshakeRefused)
        self._verdict(origin, request_id, failure.value.status, failure.value.reason)

    def _verdict(self, origin: str, request_id: str, status: int, reason: str) -> None:
        self._send_to(origin, cluster_wire.encode("verdict", self.node, request_id, status, reason, None, None, None))

    def _on_verdict(self, channel: bytes, origin: str, request_id: str, status: int, reason: str,
                    client_id: str | None, room_id: str | None, metadata: Any) -> None:
        self._own_channel(channel)
        pending = self._handshakes.get(request_id)
        if status != 200 or client_id is None or room_id is None:
            if pending is not None and pending.node == origin:
                self._refuse_forwarded(request_id, status if 400 <= status < 600 else 403, reason)
            return
        if pending is None or pending.node != origin:  # accepted too late: the judging node must forget the client
            self._tell_abandon(origin, client_id)
            return
        if not self.rooms.reserve(client_id):
            log.warn("Refused a handshake: client_id {client_id!r} is already connected", client_id=client_id)
            self._tell_abandon(origin, client_id)
            self._refuse_forwarded(request_id, 409, "client_id already in use")
            return
        del self._handshakes[request_id]
        pending.timeout.cancel()
        self._forwarded[client_id] = origin
        pending.answer.callback(Admission(client_id, room_id, {} if metadata is None else metadata))

    def abandon(self, admission: Admission) -> None:
        """An accepted client gone before the upgrade: its claim goes, and the node that judged it forgets it."""
        self.claims.release(admission.client_id)
        self._let_go(admission)

    def _let_go(self, admission: Admission) -> None:
        """Forget an accepted client before its upgrade, and tell the node that judged it."""
        node = self._forwarded.pop(admission.client_id, None)
        self._disowned.discard(admission.client_id)
        super().abandon(admission)  # the channels watched for it by _only_here too (ClusterRooms.release)
        if node is not None:
            self._tell_abandon(node, admission.client_id)

    def _on_abandon(self, channel: bytes, origin: str, client_id: str) -> None:
        self._own_channel(channel)
        self._drop_guest(origin, client_id)


#: The params of a forwarded handshake (a ``connection_request``'s), by JSON type.
_HANDSHAKE = {"headers": dict, "url": str, "remote_addr": str, "query": dict}
#: The events a node forwards for a client of its own, by action: whether each is the client's last.
_CLIENT_EVENTS = {wire.NEW_CONNECTION: False, wire.NEW_MESSAGE: False, wire.DISCONNECTED: True}


def _check_event(client_id: str | None, final: bool, line: bytes) -> dict[str, Any]:
    """The context of ``line``, an event a node forwards (one frame line, about ``client_id``); else
    ClusterWireError.

    A client's ``new_connection``, ``new_message`` (with its text) or ``disconnected`` (its last),
    whose context names that client; or, about no client, the ``error`` of a handshake refused for want
    of a backend. So what reaches a backend through Redis is what a node would send it.
    """
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ClusterWireError("a forwarded event must be one line")
    try:
        frame = wire.decode_frame(line[:-1])
    except ProtocolError as exc:
        raise ClusterWireError(f"a forwarded event that is not a frame: {exc}") from None
    params = frame.params
    context = params.get("context")
    if not isinstance(context, dict):
        raise ClusterWireError("a forwarded event without a context")
    if client_id is None:
        if frame.action != wire.ERROR or not final:
            raise ClusterWireError("a forwarded event about no client that is not a refused handshake's error")
        return context
    if _CLIENT_EVENTS.get(frame.action) is not final:
        raise ClusterWireError(f"a forwarded {frame.action!r} event that is not a client's (or final wrongly)")
    if context.get("client_id") != client_id:
        raise ClusterWireError("a forwarded event whose context is about another client")
    if frame.action == wire.NEW_MESSAGE and not isinstance(params.get("message"), str):
        raise ClusterWireError("a forwarded new_message without its text")
    return context


#: What to do with each kind of cluster message: (broker, channel, origin, *fields).
_HANDLERS: dict[str, Callable[..., None]] = {
    "room": ClusterBroker._on_room,
    "all": ClusterBroker._on_all,
    "to": ClusterBroker._on_to,
    "ask": ClusterBroker._on_ask,
    "done": ClusterBroker._on_done,
    "beat": ClusterBroker._on_beat,
    "bye": ClusterBroker._on_bye,
    "event": ClusterBroker._on_event,
    "judge": ClusterBroker._on_judge,
    "verdict": ClusterBroker._on_verdict,
    "abandon": ClusterBroker._on_abandon,
    "keep": ClusterBroker._on_keep,
    "forgot": ClusterBroker._on_forgot,
    "who": ClusterBroker._on_who,
    "members": ClusterBroker._on_members,
}
