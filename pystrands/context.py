"""The documented data classes passed to backend callbacks.

``JSONModel`` maps the keys of a dict onto the annotated attributes of a
class (a missing key becomes ``None``, an unknown key is ignored), and back.
A nested model is built from its dict by ``from_json`` and turned back into
a dict by ``to_json``, so ``from_json(to_json(x))`` round-trips.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, TypeVar, get_type_hints

__all__ = ["ConnectionRequestContext", "Context", "JSONModel"]

_Model = TypeVar("_Model", bound="JSONModel")


class JSONModel:
    """Base class: attributes are the class annotations, filled from keywords."""

    #: (fields, defaults) of the class, set by ``_schema`` on first use (underscored: not a field).
    _schema_cache: ClassVar[tuple[dict[str, Any], dict[str, Any]]]

    def __init__(self, **kwargs: Any) -> None:
        fields, defaults = type(self)._schema()
        for name in fields:
            if name in kwargs:
                value = kwargs[name]
            elif name in defaults:
                value = copy.copy(defaults[name])
            else:
                value = None
            setattr(self, name, value)

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        """Annotated attribute names, base classes first, with their types."""
        return cls._schema()[0]

    @classmethod
    def _schema(cls) -> tuple[dict[str, Any], dict[str, Any]]:
        """(name -> type, name -> class-level default), computed once per class."""
        schema = cls.__dict__.get("_schema_cache")
        if schema is None:
            try:
                hints = get_type_hints(cls)
            except (NameError, TypeError):
                hints = {}
                for klass in reversed(cls.__mro__):
                    hints.update(getattr(klass, "__annotations__", {}))
            fields = {name: hint for name, hint in hints.items() if not name.startswith("_")}
            defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}
            schema = (fields, defaults)
            cls._schema_cache = schema
        return schema

    @classmethod
    def from_json(cls: type[_Model], data: dict[str, Any]) -> _Model:
        """Create an instance from a dict; nested models are built from their dicts."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_json() needs a dict, not {type(data).__name__}")
        values = {}
        for name, hint in cls._fields().items():
            if name not in data:
                continue
            value = data[name]
            if isinstance(hint, type) and issubclass(hint, JSONModel) and isinstance(value, dict):
                value = hint.from_json(value)
            values[name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """A dict of every annotated attribute; nested models become dicts."""
        result = {}
        for name in self._fields():
            value = getattr(self, name, None)
            result[name] = value.to_json() if isinstance(value, JSONModel) else value
        return result

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in self._fields())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # unhashable (mutable, compared by value); typeshed wants a method


class Context(JSONModel):
    """A WebSocket client's identity, room and application metadata."""

    #: The client's unique id (a UUID v4 unless the backend chose another).
    client_id: str
    #: The room the client is in, as ``on_connection_request`` set it.
    room_id: str
    #: What ``on_connection_request`` stored for this client (JSON values).
    metadata: dict[str, Any]
    #: The rooms the broker reported, None when it sent none (not a field: ``to_json`` keeps its documented keys).
    _rooms: list[str] | None = None

    @property
    def rooms(self) -> list[str]:
        """The rooms the client is in now, in join order, as the event's broker reported them.

        A broker without the extension (the reference one) reports none: then
        it is ``[room_id]``, the one room such a broker knows. ``room_id``
        keeps its meaning (the room ``on_connection_request`` chose) even
        after the client left that room.
        """
        rooms: list[str] | None = getattr(self, "_rooms", None)
        if rooms is not None:
            return rooms
        room_id = getattr(self, "room_id", None)
        return [room_id] if isinstance(room_id, str) else []

    @rooms.setter
    def rooms(self, rooms: list[str]) -> None:
        self._rooms = list(rooms)


class ConnectionRequestContext(JSONModel):
    """An incoming WebSocket handshake, for ``on_connection_request`` to judge.

    ``query`` holds the URL's query string (name -> list of values) when the
    broker forwards it (the embedded broker does; the reference one does not,
    and then it is an empty dict).
    """

    #: The handshake's HTTP headers, name -> values.
    headers: dict[str, list[str]]
    #: The path the client connected to (``/ws/...``).
    url: str
    #: The client's ``address:port``.
    remote_addr: str
    #: The accepted client's Context: set its ``room_id`` and ``metadata`` here.
    context: Context
    #: The answer when the callback returns no bool (default True).
    accepted: bool
    #: The URL's query string, name -> values ({} from a broker that does not forward it).
    query: dict[str, list[str]] = {}  # noqa: RUF012  # a field's default, copied into each instance
