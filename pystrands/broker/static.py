"""``--static DIR``: the regular files of a folder, served at ``/`` on the broker's own reactor.

Not ``twisted.web.static.File``: it writes through a pull producer, which
Twisted drives with the global ``Cooperator``; that imports (so installs)
the global reactor and schedules on it, so on any other reactor (a private
one, the asyncio one of an application) a file never finishes. It also
lists directories, follows symbolic links out of its folder, and setting
its headers without its producer takes its private methods. This resource
uses only ``twisted.web``'s public API, and writes a file with a push
producer that the transport itself pauses and resumes.

What it answers (GET and HEAD; other methods get 405):

* a regular file inside the folder, by its path; for a directory, its
  ``index.html`` (a directory URL without its final ``/`` is redirected to
  one, so that the page's relative links work);
* 404 for everything else: a directory without ``index.html`` (there is no
  listing), a ``.`` or ``..`` segment (as typed, or encoded as ``%2e``), an
  encoded ``/`` or NUL, a name starting with ``.`` (``.git``, ``.env``), a
  path that leads outside the folder once its symbolic links are resolved
  (links whose target is inside are followed), anything not a regular file (a
  FIFO, a device), and a file that cannot be opened;
* ``Last-Modified``, and 304 to a matching ``If-Modified-Since``;
* ``Accept-Ranges: bytes``: one byte range of a GET (``bytes=a-b``,
  ``bytes=a-``, ``bytes=-n``) gets 206 with ``Content-Range``; a range that
  starts past the end (or ``bytes=-0``) gets 416 with ``Content-Range:
  bytes */SIZE``; several ranges, a malformed header, or an ``If-Range``
  other than the file's ``Last-Modified`` get the whole file (200), as HTTP
  allows.
"""

from __future__ import annotations

import math
import mimetypes
import os
import re
import stat
from typing import Any, BinaryIO

from twisted.internet.interfaces import IPushProducer
from twisted.web import http, pages
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.util import redirectTo
from zope.interface import implementer

__all__ = ["StaticFolder"]

CHUNK = 64 * 1024
INDEX = "index.html"
#: One range-spec of a ``bytes`` Range header: ``first-last``, ``first-`` or ``-suffix``.
_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


class Unsatisfiable(Exception):
    """The one range asked for starts past the end of the file: 416."""


class StaticFolder(Resource):
    """The folder ``path`` served at ``/``; children added with ``putChild`` come first."""

    def __init__(self, path: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.root = os.path.realpath(path)

    def getChild(self, path: bytes, request: Request) -> Resource:
        """What the rest of the path names under the folder."""
        return _Target(self.root, [path, *(request.postpath or [])])

    def render_GET(self, request: Request) -> bytes | int:  # only reached for an empty request path
        """The folder's own index page."""
        return _Target(self.root, [b""]).render_GET(request)

    render_HEAD = render_GET


class _Target(Resource):
    """What one request path names under the folder: a file, a directory's index, or nothing (404)."""

    isLeaf = True

    def __init__(self, root: str, segments: list[bytes]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.root = root
        self.segments = segments

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):  # not Resource's 405 page, deprecated in Twisted
            request.setHeader(b"allow", b"GET, HEAD")
            page = pages.errorPage(http.NOT_ALLOWED, "Method Not Allowed", "Only GET and HEAD are served here.")
            return _rendered(page, request)
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes | int:
        names = _names(self.segments)
        if names is None:
            return _not_found(request)
        path = self._inside(os.path.join(self.root, *names))
        if path is not None and os.path.isdir(path):
            index = self._inside(os.path.join(path, INDEX))
            if index is None or not _regular(index):
                return _not_found(request)
            if self.segments[-1] != b"":  # /docs -> /docs/, so that index.html's relative links work
                location, _, query = request.uri.partition(b"?")
                return redirectTo(location + b"/" + (b"?" + query if query else b""), request)
            path = index
        elif self.segments[-1] == b"":  # a file named as a directory
            return _not_found(request)
        if path is None or not _regular(path):
            return _not_found(request)
        return _serve(request, path)

    def _inside(self, path: str) -> str | None:
        """``path`` with every symbolic link resolved, if that is still inside the folder; else None."""
        real = os.path.realpath(path)
        return real if real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep) else None


def _names(segments: list[bytes]) -> list[str] | None:
    """The path's names (percent-decoded by twisted.web), or None if one may not be served."""
    names = []
    for segment in segments:
        try:
            name = segment.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
            return None  # ".", "..", dot-files; an encoded separator or NUL
        if name:
            names.append(name)
    return names


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _not_found(request: Request) -> bytes | int:
    return _rendered(pages.notFound(), request)


def _rendered(page: Any, request: Request) -> bytes | int:
    """Render one of ``twisted.web.pages``' error pages (it writes itself: NOT_DONE_YET)."""
    body: bytes | int = page.render(request)
    return body


def _content_type(path: str) -> bytes:
    kind, encoding = mimetypes.guess_type(path, strict=False)
    if kind is None or encoding is not None:  # a .gz is sent as it is, not as its content
        kind = "application/octet-stream"
    return kind.encode("ascii")


def _serve(request: Request, path: str) -> bytes | int:
    """Headers, then the file (or one range of it) through a push producer."""
    try:
        file: BinaryIO = open(path, "rb")  # noqa: SIM115 - the producer closes it
        info = os.fstat(file.fileno())
    except OSError:
        return _not_found(request)
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"content-type", _content_type(path))
    size = info.st_size
    if request.setLastModified(info.st_mtime) is http.CACHED:
        file.close()
        return b""
    wanted = None
    if request.method == b"GET" and _if_range_holds(request, info.st_mtime):
        try:
            wanted = _byte_range(request.getHeader(b"range"), size)
        except Unsatisfiable:
            file.close()
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            return b""
    offset, length = (0, size) if wanted is None else wanted
    request.setHeader(b"content-length", b"%d" % length)
    if request.method == b"HEAD":
        file.close()
        return b""
    if wanted is not None:
        request.setResponseCode(http.PARTIAL_CONTENT)
        request.setHeader(b"content-range", b"bytes %d-%d/%d" % (offset, offset + length - 1, size))
        file.seek(offset)
    _FileWriter(request, file, length).start()
    return NOT_DONE_YET


def _if_range_holds(request: Request, mtime: float) -> bool:
    """No ``If-Range``, or one equal to the file's ``Last-Modified`` (an entity tag never is: none is sent)."""
    condition = request.getHeader(b"if-range")
    return condition is None or condition.strip() == http.datetimeToString(math.ceil(mtime))


def _byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single byte range, or None: send the whole file. Raises Unsatisfiable."""
    if header is None:
        return None
    unit, equals, specs = header.decode("latin-1").partition("=")
    if not equals or unit.strip().lower() != "bytes" or "," in specs:
        return None  # another unit, or several ranges: the whole file
    spec = _SPEC.fullmatch(specs.strip())
    if spec is None or spec[1] == spec[2] == "":
        return None
    first, last = spec[1], spec[2]
    if first == "":  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), min(suffix, size)
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    end = size - 1 if last == "" else min(int(last), size - 1)
    return start, end - start + 1


@implementer(IPushProducer)
class _FileWriter:
    """Writes ``length`` bytes of a file to a request, pausing while the transport's buffer is full."""

    def __init__(self, request: Request, file: BinaryIO, length: int) -> None:
        self.request: Request | None = request
        self.file = file
        self.left = length
        self.paused = False

    def start(self) -> None:
        request = self.request
        assert request is not None
        request.notifyFinish().addErrback(lambda _: self.stopProducing())  # the client went away
        request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.request is not None:
            data = self.file.read(min(CHUNK, self.left)) if self.left > 0 else b""
            if not data:
                request = self.request
                request.unregisterProducer()
                request.finish()
                self.stopProducing()
                return
            self.left -= len(data)
            self.request.write(data)  # may call pauseProducing() when the buffer fills

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.file.close()
        self.request = None
