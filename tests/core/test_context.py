"""pystrands.context: the documented data classes."""

from __future__ import annotations

from pystrands import ConnectionRequestContext, Context, JSONModel


def test_context_from_json_documented_example() -> None:
    data = {"client_id": "550e8400-e29b-41d4-a716-446655440000", "room_id": "room1",
            "metadata": {"user": "alice"}}
    context = Context.from_json(data)
    assert (context.client_id, context.room_id, context.metadata) == (
        "550e8400-e29b-41d4-a716-446655440000", "room1", {"user": "alice"})
    assert context.to_json() == data
    assert isinstance(context, JSONModel)


def test_missing_keys_become_none_and_unknown_keys_are_ignored() -> None:
    context = Context.from_json({"client_id": "c", "headers": {}})
    assert context.to_json() == {"client_id": "c", "room_id": None, "metadata": None}
    request = ConnectionRequestContext.from_json({})
    assert (request.headers, request.url, request.remote_addr, request.context, request.accepted) == (
        None, None, None, None, None)
    assert request.query == {}


def test_connection_request_round_trip_with_nested_context() -> None:
    data = {
        "headers": {"X-Token": ["ok"]},
        "url": "/ws/lobby/alice",
        "remote_addr": "127.0.0.1:46092",
        "context": {"client_id": "c1", "room_id": "lobby", "metadata": {"user": "alice"}},
        "accepted": True,
        "query": {"token": ["t"]},
    }
    request = ConnectionRequestContext.from_json(data)
    assert isinstance(request.context, Context)
    assert request.context.metadata == {"user": "alice"}
    assert request.to_json() == data
    assert ConnectionRequestContext.from_json(request.to_json()) == request


def test_attributes_are_mutable_as_the_docs_show() -> None:
    request = ConnectionRequestContext(headers={}, url="/room1", remote_addr="1.2.3.4:5",
                                       context=Context(client_id="c", room_id=None, metadata={}),
                                       accepted=True)
    request.context.room_id = request.url.strip("/")
    request.context.metadata = {"user": "alice", "role": "admin"}
    request.accepted = False
    assert request.to_json()["context"] == {"client_id": "c", "room_id": "room1",
                                            "metadata": {"user": "alice", "role": "admin"}}
    assert request.to_json()["accepted"] is False


def test_query_default_is_not_shared_between_instances() -> None:
    first, second = ConnectionRequestContext(), ConnectionRequestContext()
    first.query["a"] = ["1"]
    assert second.query == {}


def test_subclass_adds_fields_and_repr_names_them() -> None:
    class Tagged(Context):
        tag: str

    tagged = Tagged.from_json({"client_id": "c", "tag": "t"})
    assert tagged.to_json() == {"client_id": "c", "room_id": None, "metadata": None, "tag": "t"}
    assert "tag='t'" in repr(tagged)
