"""The documented constructor of every face: defaults, attributes, extra settings, bad values."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest

import pystrands
from pystrands import AsyncPyStrandsClient, IBackend, PyStrands, PyStrandsClient
from pystrands.protocol import as_backend

FACES = [PyStrandsClient, AsyncPyStrandsClient, PyStrands]
DOCUMENTED = {"host": "localhost", "port": 8081, "auto_reconnect": True, "reconnect_delay": 1.0,
              "max_reconnect_delay": 30.0, "reconnect_backoff": 2.0}


@pytest.mark.parametrize("face", FACES)
def test_documented_defaults_are_in_the_signature_and_kept_as_attributes(face: type) -> None:
    parameters = inspect.signature(face).parameters
    assert {name: parameters[name].default for name in DOCUMENTED} == DOCUMENTED
    instance = face()
    assert {name: getattr(instance, name) for name in DOCUMENTED} == DOCUMENTED
    assert instance.connected is False


@pytest.mark.parametrize("face", FACES)
def test_given_values_and_core_settings_are_accepted(face: type) -> None:
    instance = face("broker.example.com", 9000, False, 0.5, 5.0, 1.5, concurrency=4, idle_timeout=0,
                    max_line_length=1024, send_buffer_size=10, backend_token="t")
    assert (instance.host, instance.port, instance.auto_reconnect, instance.reconnect_delay,
            instance.max_reconnect_delay, instance.reconnect_backoff) == (
        "broker.example.com", 9000, False, 0.5, 5.0, 1.5)
    settings = instance._settings()
    assert (settings.concurrency, settings.idle_timeout, settings.send_buffer_size) == (4, 0, 10)


def test_blocking_handlers_run_one_at_a_time_unless_told() -> None:
    assert PyStrandsClient()._settings().concurrency == 1
    assert AsyncPyStrandsClient()._settings().concurrency > 1


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(
    ("arguments", "error", "name"),
    [
        ({"host": 127001}, TypeError, "host"),
        ({"host": None}, TypeError, "host"),
        ({"host": ""}, ValueError, "host"),
        ({"port": 0}, ValueError, "port"),
        ({"port": 65536}, ValueError, "port"),
        ({"port": "8081"}, TypeError, "port"),
        ({"port": 80.5}, TypeError, "port"),
        ({"auto_reconnect": "yes"}, TypeError, "auto_reconnect"),
        ({"reconnect_delay": -1}, ValueError, "reconnect_delay"),
        ({"reconnect_delay": math.nan}, ValueError, "reconnect_delay"),
        ({"max_reconnect_delay": -0.1}, ValueError, "max_reconnect_delay"),
        ({"reconnect_delay": 5.0, "max_reconnect_delay": 1.0}, ValueError, "max_reconnect_delay"),
        ({"reconnect_backoff": 0.5}, ValueError, "reconnect_backoff"),
        ({"reconnect_backoff": "2"}, TypeError, "reconnect_backoff"),
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"idle_timeout": -5}, ValueError, "idle_timeout"),
        ({"send_buffer_size": 1.5}, TypeError, "send_buffer_size"),
        ({"no_such_setting": 1}, TypeError, "no_such_setting"),
    ],
)
def test_nonsense_is_refused_naming_the_parameter(face: type, arguments: dict[str, Any], error: type,
                                                  name: str) -> None:
    with pytest.raises(error, match=name):
        face(**arguments)


@pytest.mark.parametrize("face", [PyStrandsClient, AsyncPyStrandsClient])
def test_a_bad_attribute_set_later_is_refused_at_connect(face: type) -> None:
    instance = face()
    instance.port = -1
    with pytest.raises(ValueError, match="port"):
        instance._settings()


def test_public_import_paths() -> None:
    from pystrands import ConnectionRequestContext, Context
    from pystrands.app import PyStrands as App
    from pystrands.async_client import AsyncPyStrandsClient as Async
    from pystrands.client import PyStrandsClient as Blocking
    from pystrands.context import ConnectionRequestContext as Request

    assert (Blocking, Async, App) == (PyStrandsClient, AsyncPyStrandsClient, PyStrands)
    assert Request is ConnectionRequestContext and Context is pystrands.context.Context
    assert {"PyStrandsClient", "AsyncPyStrandsClient", "PyStrands"} <= set(pystrands.__all__)


@pytest.mark.parametrize("face", [PyStrandsClient, PyStrands])
def test_faces_adapt_to_ibackend_through_the_registry(face: type) -> None:
    class Sub(face):  # type: ignore[misc, valid-type]
        pass

    instance = Sub()
    backend = as_backend(instance)
    assert IBackend.providedBy(backend) and as_backend(instance) is backend


def test_the_asyncio_face_adapts_only_where_the_global_reactor_is_the_asyncio_one() -> None:
    import sys

    installed = sys.modules.get("twisted.internet.reactor")
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if isinstance(installed, AsyncioSelectorReactor):
        assert IBackend.providedBy(as_backend(AsyncPyStrandsClient()))
    else:
        with pytest.raises(TypeError, match="--reactor=asyncio"):
            as_backend(AsyncPyStrandsClient())
