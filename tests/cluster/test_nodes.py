"""A cluster of real broker processes over a real Redis: rooms, sends, forwarding and extensions across nodes.

Node A has a backend, node B has none: B's clients are judged and served by
A's backend through Redis, and what A's backend sends reaches them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.cluster.support import (
    ClusterBackend,
    RedisServer,
    metric,
    node_id,
    ready,
    silent,
    start_node,
    texts,
    wait_until,
)
from tests.demo.support import Broker, Launch, OpenWs, free_port, open_when_served, start_broker


@pytest.fixture
def pair(launch: Launch, redis: RedisServer) -> tuple[Broker, Broker, ClusterBackend]:
    """Nodes A (with a backend) and B (without one) of one cluster."""
    a = start_node(launch, redis, "a")
    b = start_node(launch, redis, "b")
    return a, b, ClusterBackend(a.tcp_port, "a")


def test_sends_reach_every_node_once_in_order(pair: tuple[Broker, Broker, ClusterBackend], open_ws: OpenWs) -> None:
    a, b, backend = pair
    on_a = open_when_served(open_ws, f"{a.ws_url}/lobby")
    on_b = open_when_served(open_ws, f"{b.ws_url}/lobby")  # judged by A's backend, through Redis
    elsewhere = open_ws(f"{b.ws_url}/kitchen")
    ids = [backend.wait_for(lambda e: e["action"] == "new_connection")["params"]["context"]["client_id"]
           for _ in range(3)]
    assert ids == ["a-0", "a-1", "a-2"]

    sent = []
    for n in range(30):  # one backend's room messages, broadcasts and direct sends, interleaved
        if n % 10 == 3:
            backend.send("broadcast", {"message": f"all {n}"})
            sent.append(f"all {n}")
        elif n % 10 == 7:
            backend.send("message_to_connection", {"conn_id": "a-1", "message": f"to b {n}"})
            sent.append(f"to b {n}")
        else:
            backend.send("message_to_room", {"room_id": "lobby", "message": f"room {n}"})
            sent.append(f"room {n}")
    assert texts(on_b, len(sent)) == sent
    assert texts(on_a, len(sent) - 3) == [text for text in sent if not text.startswith("to b")]
    assert texts(elsewhere, 3) == [text for text in sent if text.startswith("all")]
    for client in (on_a, on_b, elsewhere):
        silent(client)

    for n in range(20):  # B's client's messages reach A's backend in order, with its context
        on_b.send(f"from b {n}")
    events = [backend.wait_for(lambda e: e["action"] == "new_message") for _ in range(20)]
    assert [event["params"]["message"] for event in events] == [f"from b {n}" for n in range(20)]
    assert events[0]["params"]["context"] == {"client_id": "a-1", "room_id": "lobby", "metadata": {"by": "a"},
                                              "rooms": ["lobby"]}
    on_b.close()
    gone = backend.wait_for(lambda e: e["action"] == "disconnected")
    assert gone["params"]["context"]["client_id"] == "a-1"


def test_a_room_channel_has_the_nodes_with_members_as_subscribers(
        launch: Launch, redis: RedisServer, pair: tuple[Broker, Broker, ClusterBackend], open_ws: OpenWs) -> None:
    a, b, backend = pair
    open_when_served(open_ws, f"{a.ws_url}/lobby")
    open_when_served(open_ws, f"{b.ws_url}/lobby")
    kitchen = open_ws(f"{b.ws_url}/kitchen")
    for _ in range(3):
        backend.wait_for(lambda e: e["action"] == "new_connection")
    # Subscribing is asynchronous: a node subscribes as it acts, Redis counts once it has read the command.
    wait_until(lambda: [redis.subscribers(b"test:room:" + room) for room in (b"lobby", b"kitchen", b"cellar")]
               == [2, 1, 0], 5, "one subscriber per node with members")
    wait_until(lambda: [redis.subscribers(b"test:client:a-" + n) for n in (b"0", b"1", b"2", b"3")] == [1, 1, 1, 0],
               5, "one subscriber per client")
    assert backend.request("join_room", {"client_id": "a-0", "room_id": "kitchen"})["result"] is True
    wait_until(lambda: redis.subscribers(b"test:room:kitchen") == 2, 5, "A to subscribe to the kitchen")
    assert backend.request("leave_room", {"client_id": "a-0", "room_id": "kitchen"})["result"] is True
    kitchen.close()
    backend.wait_for(lambda e: e["action"] == "disconnected")
    wait_until(lambda: redis.subscribers(b"test:room:kitchen") == 0, 5, "the kitchen to be empty")
    assert redis.subscribers(b"test:client:a-2") == 0


def test_a_redis_with_a_password_and_a_database(launch: Launch, tmp_path: Path, open_ws: OpenWs) -> None:
    redis = RedisServer(tmp_path / "redis", free_port(), "--requirepass", "s3 cr3t")
    redis.start()
    try:
        url = f"redis://:s3%20cr3t@127.0.0.1:{redis.port}/5"
        a = start_node(launch, redis, "a", url=url)
        ws_port, tcp_port = free_port(), free_port()
        child = launch(["-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port),
                        "--cluster-name", "test"], name="b", env={"PYSTRAND_REDIS_URL": url})
        child.wait_for_output("connected to Redis")
        b = Broker(child, ws_port, tcp_port)
        warning = "give the URL in the environment variable PYSTRAND_REDIS_URL instead"
        assert a.child.output().count(warning) == 1  # its password is on the command line, which ps shows
        assert warning not in b.child.output()
        backend = ClusterBackend(a.tcp_port, "a")
        on_b = open_when_served(open_ws, f"{b.ws_url}/lobby")
        backend.wait_for(lambda e: e["action"] == "new_connection")
        backend.send("message_to_room", {"room_id": "lobby", "message": "over a password"})
        assert texts(on_b, 1) == ["over a password"]
        node_a = node_id(a).encode()
        login = ((b"AUTH", b"s3 cr3t"), (b"SELECT", b"5"))
        assert redis.command(b"GET", b"test:alive:" + node_a, before=login) == b"1"  # A's backend count

        wrong = start_broker(launch, "--redis", f"redis://:wrong@127.0.0.1:{redis.port}/5",
                             "--cluster-name", "test", name="wrong")
        wrong.child.wait_for_output("refused the cluster's connection")
        alone = ClusterBackend(wrong.tcp_port, "w")  # it serves its own clients all the same
        assert open_when_served(open_ws, f"{wrong.ws_url}/lobby")
        assert alone.wait_for(lambda e: e["action"] == "new_connection")["params"]["context"]["client_id"] == "w-0"
    finally:
        redis.stop()


def test_extension_requests_act_on_clients_of_other_nodes(pair: tuple[Broker, Broker, ClusterBackend],
                                                          open_ws: OpenWs) -> None:
    a, b, backend = pair
    open_when_served(open_ws, f"{a.ws_url}/lobby")
    on_b = open_when_served(open_ws, f"{b.ws_url}/lobby")
    other = open_ws(f"{b.ws_url}/kitchen")
    for _ in range(3):
        backend.wait_for(lambda e: e["action"] == "new_connection")

    members = backend.request("room_members", {"room_id": "lobby"})
    assert members["ok"] is True
    assert sorted(member["client_id"] for member in members["result"]) == ["a-0", "a-1"]

    assert backend.request("join_room", {"client_id": "a-2", "room_id": "lobby"}) == {"ok": True, "result": True}
    backend.send("message_to_room", {"room_id": "lobby", "message": "with the newcomer"})
    assert texts(other, 1) == ["with the newcomer"]
    assert backend.request("leave_room", {"client_id": "a-2", "room_id": "lobby"}) == {"ok": True, "result": True}
    backend.send("message_to_room", {"room_id": "lobby", "message": "without"})
    assert texts(on_b, 2) == ["with the newcomer", "without"]
    silent(other)

    assert backend.request("set_metadata", {"client_id": "a-1", "metadata": {"nick": "bee"}})["result"] is True
    on_b.send("hello")
    context = backend.wait_for(lambda e: e["action"] == "new_message")["params"]["context"]
    assert context["metadata"] == {"nick": "bee"}

    assert backend.request("join_room", {"client_id": "nobody", "room_id": "lobby"}) == {"ok": True, "result": False}
    refused = backend.request("join_room", {"client_id": "a-1"})
    assert refused["ok"] is False and "room_id" in refused["error"]

    assert backend.request("disconnect_client", {"client_id": "a-1", "code": 4001, "reason": "kicked"})["result"]
    with pytest.raises(ConnectionClosed) as closed:
        on_b.recv(timeout=5)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "kicked")
    gone = backend.wait_for(lambda e: e["action"] == "disconnected")
    assert gone["params"]["context"]["client_id"] == "a-1"


def test_no_backend_anywhere_is_503_until_one_connects(launch: Launch, redis: RedisServer, open_ws: OpenWs) -> None:
    a = start_node(launch, redis, "a")
    b = start_node(launch, redis, "b")
    for node in (a, b):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(f"{node.ws_url}/lobby")
        assert refused.value.response.status_code == 503
    assert (ready(a), ready(b)) == (503, 503)
    assert metric(b, "pystrands_broker_cluster_nodes_with_backends") == 0
    backend = ClusterBackend(a.tcp_port, "a")
    on_b = open_when_served(open_ws, f"{b.ws_url}/lobby")
    assert backend.wait_for(lambda e: e["action"] == "new_connection")["params"]["context"]["client_id"] == "a-0"
    assert (ready(a), ready(b)) == (200, 200)  # B is ready for a load balancer: it forwards to A's backend
    assert [metric(b, "pystrands_broker_cluster_" + name) for name in ("redis_up", "nodes", "nodes_with_backends")] \
        == [1, 1, 1]
    on_b.send("hi")
    assert backend.wait_for(lambda e: e["action"] == "new_message")["params"]["message"] == "hi"


def test_clusters_sharing_a_redis_stay_apart(launch: Launch, redis: RedisServer, open_ws: OpenWs) -> None:
    a = start_node(launch, redis, "a", cluster="one")
    b = start_node(launch, redis, "b", cluster="two")
    backend = ClusterBackend(a.tcp_port, "a")
    open_when_served(open_ws, f"{a.ws_url}/lobby")
    with pytest.raises(InvalidStatus) as refused:  # B's cluster has no backend
        open_ws(f"{b.ws_url}/lobby")
    assert refused.value.response.status_code == 503
    assert backend.wait_for(lambda e: e["action"] == "new_connection")


def test_a_client_id_is_refused_while_another_node_holds_it(launch: Launch, redis: RedisServer,
                                                            open_ws: OpenWs) -> None:
    a = start_node(launch, redis, "a")
    b = start_node(launch, redis, "b")
    first = ClusterBackend(a.tcp_port, "a", client_id="same")
    ClusterBackend(b.tcp_port, "b", client_id="same")
    held = open_when_served(open_ws, f"{a.ws_url}/lobby")
    first.wait_for(lambda e: e["action"] == "new_connection")
    with pytest.raises(InvalidStatus) as refused:
        open_when_served(open_ws, f"{b.ws_url}/lobby")
    assert refused.value.response.status_code == 409
    held.close()
    first.wait_for(lambda e: e["action"] == "disconnected")
    wait_until(lambda: redis.command(b"EXISTS", b"test:claim:same") == b":0", 5, "A to let the id go")
    assert open_ws(f"{b.ws_url}/lobby")  # free again


def test_a_node_that_stops_says_goodbye(pair: tuple[Broker, Broker, ClusterBackend], open_ws: OpenWs) -> None:
    a, b, backend = pair
    on_b = open_when_served(open_ws, f"{b.ws_url}/lobby")
    backend.wait_for(lambda e: e["action"] == "new_connection")
    node_b = node_id(b)
    assert b.child.stop() == 0  # SIGTERM
    with pytest.raises(ConnectionClosed) as closed:
        on_b.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert backend.wait_for(lambda e: e["action"] == "disconnected")["params"]["context"]["client_id"] == "a-0"
    a.child.wait_for_output(f"node {node_b} left", timeout=5)
    assert "is unreachable" not in b.child.output() and "could not be published" not in b.child.output()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A certificate authority, and a certificate for 127.0.0.1 that it signed: (CA, certificate, key)."""
    directory.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "redis.key",
            "-out", "redis.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "redis.pem")
    return directory / "ca.pem", directory / "redis.pem", directory / "redis.key"


def test_a_redis_over_tls(launch: Launch, tmp_path: Path, open_ws: OpenWs) -> None:
    ca, certificate, key = _certificates(tmp_path / "tls")
    tls_port = free_port()
    redis = RedisServer(tmp_path / "redis", free_port(), "--tls-port", str(tls_port), "--tls-cert-file",
                        str(certificate), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                        "--tls-auth-clients", "no")
    redis.start()
    try:
        nodes = []
        for name in ("a", "b"):  # the private CA is trusted through OpenSSL's SSL_CERT_FILE
            ws_port, tcp_port = free_port(), free_port()
            child = launch(["-m", "pystrands", "server", "--ws-port", str(ws_port), "--tcp-port", str(tcp_port),
                            "--redis", f"rediss://127.0.0.1:{tls_port}", "--cluster-name", "test"],
                           name=name, env={"SSL_CERT_FILE": str(ca)})
            child.wait_for_output("connected to Redis rediss://127.0.0.1")
            nodes.append(Broker(child, ws_port, tcp_port))
        backend = ClusterBackend(nodes[0].tcp_port, "a")
        on_b = open_when_served(open_ws, f"{nodes[1].ws_url}/lobby")
        backend.wait_for(lambda e: e["action"] == "new_connection")
        backend.send("message_to_room", {"room_id": "lobby", "message": "over TLS"})
        assert texts(on_b, 1) == ["over TLS"]
    finally:
        redis.stop()
