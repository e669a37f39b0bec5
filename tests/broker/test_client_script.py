"""``/pystrands.js``: the broker serves the browser client, with or without ``--static``."""

from __future__ import annotations

import pathlib
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from pystrands.broker.client_script import client_script

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "pystrands" / "broker" / "pystrands.js"


def fetch(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_the_client_is_the_packaged_file() -> None:
    assert client_script() == SOURCE.read_bytes()
    assert b"export class PyStrandsClient" in client_script()


def test_served_without_a_static_folder(start_broker: Callable[..., Any]) -> None:
    base = f"http://127.0.0.1:{start_broker().ws_port}"
    status, headers, body = fetch(f"{base}/pystrands.js")
    assert status == 200
    assert body == SOURCE.read_bytes()
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["access-control-allow-origin"] == "*"

    status, again, body = fetch(f"{base}/pystrands.js", method="HEAD")
    assert (status, body, again["content-type"]) == (200, b"", "text/javascript; charset=utf-8")
    status, _, body = fetch(f"{base}/pystrands.js", **{"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")

    for path in ("/", "/pystrands.js/", "/pystrands.js/x", "/other.js"):
        assert fetch(base + path)[0] == 404, path


def test_with_a_static_folder_the_brokers_copy_wins(start_broker: Callable[..., Any],
                                                    tmp_path: pathlib.Path) -> None:
    (tmp_path / "index.html").write_text("<p>page</p>")
    (tmp_path / "pystrands.js").write_text("// an old copy")
    base = f"http://127.0.0.1:{start_broker(static=str(tmp_path)).ws_port}"
    status, headers, body = fetch(f"{base}/pystrands.js")
    assert (status, body) == (200, SOURCE.read_bytes())
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert fetch(f"{base}/index.html")[2] == b"<p>page</p>"


def test_under_ws_it_is_a_websocket_path_like_any_other(start_broker: Callable[..., Any]) -> None:
    """``/ws/pystrands.js`` without an upgrade is a plain request to a WebSocket path: HTTP 426."""
    assert fetch(f"http://127.0.0.1:{start_broker().ws_port}/ws/pystrands.js")[0] == 426
