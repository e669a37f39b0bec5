"""``--static DIR``: a folder served at ``/`` on the broker's own reactor.

``twisted.web.static.File`` writes through a pull producer, which Twisted
drives with the global ``Cooperator``: that imports (so installs) the global
reactor and schedules on it, so on any other reactor (a private one, the
asyncio one of an application) a file never finishes. Here the file is
written by a push producer that the transport itself pauses and resumes.
Range requests are answered with the whole file (a 200), as HTTP allows.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.interfaces import IPushProducer
from twisted.web import http
from twisted.web.server import Request
from twisted.web.static import File
from zope.interface import implementer

__all__ = ["StaticFolder"]

CHUNK = 64 * 1024


class StaticFolder(File):
    """``File`` with writes that need no global reactor; children are StaticFolders too."""

    def makeProducer(self, request: Request, fileForReading: BinaryIO) -> Any:
        self._setContentHeaders(request)
        request.setResponseCode(http.OK)
        return _FileWriter(request, fileForReading)


@implementer(IPushProducer)
class _FileWriter:
    """Writes a file to a request, pausing while the transport's buffer is full."""

    def __init__(self, request: Request, file: BinaryIO) -> None:
        self.request: Request | None = request
        self.file = file
        self.paused = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.request is not None:
            data = self.file.read(CHUNK)
            if not data:
                request = self.request
                request.unregisterProducer()
                request.finish()
                self.stopProducing()
                return
            self.request.write(data)  # may call pauseProducing() when the buffer fills

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.file.close()
        self.request = None
