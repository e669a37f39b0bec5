"""``/pystrands.js``: the browser client, served by the broker whether or not ``--static`` is given.

The module (``pystrands/broker/pystrands.js``, package data) is read once
when the WebSocket port is set up. It is public like any static file, so it
is served to any origin (``Access-Control-Allow-Origin: *``: a page on
another site may import it as a module); browsers revalidate it on each load
(``no-cache`` with an ETag), so an upgraded broker serves the new client at once.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web import http, pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

__all__ = ["CONTENT_TYPE", "PATH", "ClientScript", "client_script"]

#: The path segment at the root of the WebSocket port's web site.
PATH = b"pystrands.js"
#: The script's media type, sent with ``nosniff`` so that it runs only as a script.
CONTENT_TYPE = b"text/javascript; charset=utf-8"


def client_script() -> bytes:
    """The bytes of the browser client, as installed with the package."""
    return resources.files("pystrands.broker").joinpath("pystrands.js").read_bytes()


class ClientScript(Resource):
    """GET (and HEAD) of the browser client, with its content type and an ETag."""

    def __init__(self, body: bytes | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.body = client_script() if body is None else body
        self.etag = b'"' + hashlib.sha256(self.body).hexdigest()[:32].encode("ascii") + b'"'

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Nothing lives below the script: 404."""
        return pages.notFound()  # /pystrands.js/anything

    def render_GET(self, request: Request) -> bytes:
        """The script, or 304 when the browser's copy (its ETag) is current."""
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"access-control-allow-origin", b"*")
        if request.setETag(self.etag) == http.CACHED:
            return b""
        return self.body
