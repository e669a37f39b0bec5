"""pystrands.wire: decoding, encoding, builders and the metadata unwrap."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from pystrands import wire
from pystrands.errors import ProtocolError
from tests.support import transcript


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'"text"', "not a JSON object but str"),
        (b'{"request_id": "r", "params": {}}', "'action' is missing"),
        (b'{"request_id": "r", "action": 5, "params": {}}', "'action' is not a string"),
        (b'{"request_id": 7, "action": "x", "params": {}}', "'request_id' is not a string"),
        (b'{"request_id": "r", "action": "x", "params": []}', "'params' is not an object"),
        (b'{"request_id": "r", "action": "x", "params": "p"}', "'params' is not an object"),
    ],
)
def test_decode_says_what_is_wrong(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        wire.decode_frame(line)


def test_decode_every_transcript_frame() -> None:
    for frame in transcript.frames():
        line = json.dumps(frame, separators=(",", ":")).encode()
        assert wire.decode_frame(line) == (frame["request_id"], frame["action"], frame["params"])


def test_decode_accepts_spaced_json_escapes_and_missing_optional_keys() -> None:
    spaced = b'{ "request_id" : "r1" , "action" : "new_message" , "params" : { "message" : "\\u003cb\\u003e&" } }'
    assert wire.decode_frame(spaced) == ("r1", "new_message", {"message": "<b>&"})
    assert wire.decode_frame('{"action":"heartbeat"}') == ("", "heartbeat", {})
    assert wire.decode_frame(b'{"action":"heartbeat","params":null}').params == {}


def test_decode_parts_is_the_frame_as_a_plain_tuple() -> None:
    for line in (b'{"request_id":"r1","action":"new_message","params":{"message":"m"}}', b'{"action":"heartbeat"}'):
        parts = wire.decode_parts(line)
        assert type(parts) is tuple and parts == wire.decode_frame(line)
        assert type(wire.decode_frame(line)) is wire.Frame
    with pytest.raises(ProtocolError, match="'params' is not an object"):
        wire.decode_parts(b'{"request_id": "r", "action": "x", "params": []}')


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_random_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        frame = wire.decode_frame(data)
    except ProtocolError:
        return
    assert isinstance(frame.action, str) and isinstance(frame.params, dict)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=10))
def test_decode_wrong_json_types_raise_only_protocol_error(value: object) -> None:
    for frame in ({"request_id": value, "action": "x", "params": {}},
                  {"request_id": "r", "action": value, "params": {}},
                  {"request_id": "r", "action": "x", "params": value},
                  value):
        try:
            wire.decode_frame(json.dumps(frame))
        except ProtocolError:
            pass


def test_encode_is_compact_json_with_one_newline() -> None:
    data = wire.encode_frame("broadcast", {"message": "line1\nline2 <>&"}, "rid")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b": " not in data and b", " not in data
    assert json.loads(data) == {"request_id": "rid", "action": "broadcast",
                                "params": {"message": "line1\nline2 <>&"}}


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError, match="cannot be encoded"):
        wire.encode_frame("response", {"metadata": {"when": object()}})


@given(st.text(), st.dictionaries(st.text(), st.text() | st.integers(-(2 ** 63), 2 ** 63 - 1) | st.lists(st.text())))
def test_new_message_frame_is_the_encoded_event_with_the_context_spliced_in(message: str, context: dict) -> None:
    frame = wire.new_message_frame(message, orjson.dumps(context))
    request_id = json.loads(frame)["request_id"]
    assert frame == wire.encode_frame(wire.NEW_MESSAGE, {"message": message, "context": context}, request_id)
    assert request_id != json.loads(wire.new_message_frame(message, b"{}"))["request_id"]


def test_new_message_frame_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(TypeError, match="new_message frame cannot be encoded"):
        wire.new_message_frame("lone \ud800 surrogate", b"{}")


#: The sends written without encoding a dict: (builder, action, the params it stands for).
STRING_SENDS = [
    (lambda a, b: wire.room_message_frame(a, b), wire.MESSAGE_TO_ROOM, lambda a, b: {"room_id": a, "message": b}),
    (lambda a, b: wire.private_message_frame(a, b), wire.MESSAGE_TO_CONNECTION,
     lambda a, b: {"conn_id": a, "message": b}),
    (lambda a, b: wire.broadcast_frame(b), wire.BROADCAST, lambda a, b: {"message": b}),
]


@given(st.text(), st.text())
def test_sends_are_byte_for_byte_the_encoded_frame(first: str, second: str) -> None:
    for build, action, params in STRING_SENDS:
        frame = build(first, second)
        request_id = json.loads(frame)["request_id"]
        assert frame == wire.encode_frame(action, params(first, second), request_id)
        assert request_id != json.loads(build(first, second))["request_id"]


@pytest.mark.parametrize(("build", "action", "params"), STRING_SENDS)
def test_sends_refuse_what_json_cannot_carry_naming_the_action(build: Any, action: str, params: Any) -> None:
    with pytest.raises(TypeError, match=f"{action} frame cannot be encoded"):
        build("room", "lone \ud800 surrogate")
    if action != wire.BROADCAST:
        with pytest.raises(TypeError, match=f"{action} frame cannot be encoded"):
            build("lone \udfff", "fine")


def test_builders_match_the_transcript_frames() -> None:
    expected = {f["action"]: f["params"] for f in transcript.frames("backend")}
    assert json.loads(wire.room_message_frame("lobby", "room:hello"))["params"] == expected["message_to_room"] | {"message": "room:hello"}
    private = json.loads(wire.private_message_frame("client-alice", "private:hello"))
    assert private["action"] == "message_to_connection"
    assert set(private["params"]) == set(expected["message_to_connection"]) == {"conn_id", "message"}
    assert json.loads(wire.broadcast_frame("x"))["params"].keys() == expected["broadcast"].keys()
    response = json.loads(wire.response_frame("rid", True, "c", "lobby", {"user": "alice"}))
    assert response == {"request_id": "rid", "action": "response",
                        "params": {"accepted": True, "client_id": "c", "room_id": "lobby",
                                   "metadata": {"user": "alice"}}}
    assert set(response["params"]) == set(expected["response"])
    assert json.loads(wire.auth_frame("s3cret")) | {"request_id": "-"} == {
        "request_id": "-", "action": "auth", "params": {"token": "s3cret"}}


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda bad: wire.room_message_frame(bad, "m"), "room_id"),
        (lambda bad: wire.room_message_frame("r", bad), "message"),
        (lambda bad: wire.private_message_frame(bad, "m"), "client_id"),
        (lambda bad: wire.private_message_frame("c", bad), "message"),
        (lambda bad: wire.broadcast_frame(bad), "message"),
        (lambda bad: wire.response_frame("r", True, bad, "room", {}), "client_id"),
        (lambda bad: wire.response_frame("r", True, "c", bad, {}), "room_id"),
        (lambda bad: wire.auth_frame(bad), "token"),
    ],
)
@pytest.mark.parametrize("bad", [None, 5, 1.5, b"bytes", {"a": 1}, ["m"]])
def test_builders_refuse_non_strings_naming_the_argument(build, name: str, bad: object) -> None:
    with pytest.raises(TypeError, match=f"^{name} must be a str"):
        build(bad)


def test_unwrap_metadata_nested_plain_and_missing() -> None:
    nested = transcript.frames("broker", "new_connection")[0]["params"]["context"]["metadata"]
    assert wire.unwrap_metadata(nested) == {"user": "alice"}
    assert wire.unwrap_metadata({"user": "alice"}) == {"user": "alice"}
    assert wire.unwrap_metadata({"accepted": True, "metadata": {"x": 1}}) == {"accepted": True, "metadata": {"x": 1}}
    assert wire.unwrap_metadata(None) == {}
    assert wire.unwrap_metadata({"accepted": True, "client_id": "c", "room_id": "r", "metadata": None}) == {}


def test_excerpt_is_short_and_printable() -> None:
    assert len(wire.excerpt(b"x" * 10_000)) < 140
    assert wire.excerpt(b"\xff\x00abc").startswith("'")


@pytest.mark.parametrize(("code", "reason", "match"), [
    (1000, "", None), (3000, "", None), (4999, "x" * 123, None), (4000, "é" * 61 + "x", None),
    (999, "", "code must be 1000 or 3000-4999"), (1001, "", "not 1001"), (2999, "", "code"), (5000, "", "code"),
    (4000, "é" * 62, "reason must be at most 123 bytes of UTF-8 .*not 124"),
])
def test_one_close_rule_for_the_library_and_the_broker(code: int, reason: str, match: str | None) -> None:
    from pystrands.broker import extensions

    params = {"client_id": "a", "code": code, "reason": reason}
    if match is None:
        wire.check_close(code, reason)
        wire.disconnect_client_request("a", code, reason)
        assert extensions.close_params(params) == ("a", code, reason)
        return
    with pytest.raises(ValueError, match=match) as library:
        wire.disconnect_client_request("a", code, reason)
    with pytest.raises(extensions.BadParams) as broker:
        extensions.close_params(params)
    assert str(broker.value) == str(library.value)


def test_set_metadata_request_names_the_metadata_it_cannot_encode() -> None:
    with pytest.raises(TypeError, match="^metadata must be JSON-serialisable: "):
        wire.set_metadata_request("a", {"when": object()})
    assert wire.set_metadata_request("a", None).params == b'{"client_id":"a","metadata":null}'


def test_metadata_with_nan_or_infinity_is_refused_not_turned_into_null() -> None:
    for bad in ({"score": float("inf")}, {"deep": [1, {"n": float("nan")}]}, [float("-inf")], float("nan")):
        with pytest.raises(TypeError, match="^metadata cannot be encoded as JSON: (nan|inf|-inf) is not a JSON number"):
            wire.set_metadata_request("a", bad)
        with pytest.raises(TypeError, match="^metadata cannot be encoded as JSON"):
            wire.response_frame("r", True, "c", "room", bad)
    assert orjson.loads(wire.response_frame("r", True, "c", "room", {"x": 1.5, "big": 1e308}))["params"][
        "metadata"] == {"x": 1.5, "big": 1e308}



def test_the_broker_announces_the_librarys_features() -> None:
    from pystrands.broker import extensions

    assert extensions.FEATURES is wire.FEATURES
