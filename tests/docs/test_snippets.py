"""Every ```python block of README.md and docs/*.md, run as written against a real embedded broker.

The rules, for whoever writes a block:

* The test starts ``python -m pystrands server`` on free ports and rewrites
  the port numbers 8081 (backends) and 8080 (WebSocket clients) in the
  block to that broker's; nothing else of the block changes. Name the port
  in the block (``port=8081``): a block that relies on the default port
  would reach whatever listens on 8081 here.
* Each block runs as a file of its own in an empty folder, ``python
  block.py``. One whose first line is ``# NAME.py`` is saved as ``NAME.py``,
  and each ``twistd ...`` line of the ```sh block right after it is run in
  that folder too, as the reader would.
* A block (or twistd command) that names port 8081 is a backend: it must
  answer a WebSocket client of ``/ws/lobby`` (the test sends a line and
  waits for a message that contains it: an echo, a chat line), then stop
  on Ctrl-C (SIGINT; SIGTERM for twistd) with exit status 0 and no
  traceback. Any other block must exit 0 by itself.
* A block that is a fragment on purpose carries ``<!-- not run: reason -->``
  on the line before its fence, and is listed in ``NOT_RUN`` below.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.demo.support import REPO, Broker, Child, Launch, launching, start_broker

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TWISTD = str(Path(sys.executable).parent / "twistd")
#: Blocks marked ``<!-- not run: reason -->``, as (document, first line of the block).
NOT_RUN: set[tuple[str, str]] = set()
#: Headers the WebSocket client sends to the backend of a module block (by file name).
CLIENT_HEADERS = {"chat.py": {"X-Token": "secret"}}  # chat.py refuses a handshake without it


@dataclass
class Block:
    """One ```python block: where it is, its code, and what the document says around it."""

    document: Path
    line: int
    code: str
    marker: str | None  # the reason of a <!-- not run: ... --> before it
    commands: list[str] = field(default_factory=list)  # twistd lines of the ```sh block after it

    @property
    def module(self) -> str | None:
        """``NAME.py`` when the block's first line is ``# NAME.py``."""
        match = re.fullmatch(r"#\s*(\w+\.py)\s*", self.code.splitlines()[0])
        return match.group(1) if match else None

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def python_blocks(document: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, in order."""
    lines = document.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if not fence.startswith("```") or fence == "```":
            index += 1
            continue
        language = fence[3:].strip()
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        body = lines[index + 1:end]
        if language in ("python", "py"):
            before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = re.fullmatch(r"<!--\s*not run:\s*(.+?)\s*-->", before)
            blocks.append(Block(document, index + 1, "\n".join(body) + "\n", marker and marker.group(1)))
        elif language in ("sh", "bash", "console") and blocks and blocks[-1].module:
            after_block = blocks[-1]
            if not any(lines[i].strip() for i in range(after_block.line + len(after_block.code.splitlines()) + 1,
                                                        index)):
                after_block.commands += [line.strip() for line in body if line.strip().startswith("twistd ")]
        index = end + 1
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in python_blocks(document)]


def point_at(text: str, broker: Broker) -> str:
    """``text`` with the documented ports replaced by the test broker's (and nothing else changed)."""
    return re.sub(r"\b8080\b", str(broker.ws_port), re.sub(r"\b8081\b", str(broker.tcp_port), text))


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    with launching(tmp_path, grace=10.0) as start:
        yield start


def round_trip(child: Child, broker: Broker, headers: dict[str, str], timeout: float = 30.0) -> None:
    """Return once a WebSocket client got its own line back through the backend that ``child`` runs."""
    deadline = time.monotonic() + timeout
    while True:
        if child.process.poll() is not None:
            raise child.fail(f"exited with status {child.process.returncode} instead of serving")
        if time.monotonic() > deadline:
            raise child.fail(f"served no WebSocket client within {timeout}s")
        try:
            ws = connect(f"{broker.ws_url}/lobby", additional_headers=headers, open_timeout=5)
        except InvalidStatus as refused:
            if refused.response.status_code != 503:  # 503: no backend connected yet
                raise child.fail(f"the broker refused the client with HTTP {refused.response.status_code}") from None
            time.sleep(0.05)
            continue
        with ws:
            line = f"hello {uuid.uuid4().hex[:8]}"
            ws.send(line)
            while line not in ws.recv(timeout=10):  # skips what else the room gets
                pass
        return


def run_and_check(child: Child, broker: Broker, text: str, headers: dict[str, str], stop: signal.Signals) -> None:
    """A backend (``text`` names port 8081) serves and stops cleanly; anything else exits 0 by itself."""
    if re.search(r"\b8081\b", text):
        round_trip(child, broker, headers)
        status = child.stop(stop)
        assert status in (0, -stop), child.fail(f"stopped with status {status}")
    else:
        try:
            status = child.process.wait(30)
        except subprocess.TimeoutExpired:
            raise child.fail("did not exit within 30s") from None
        assert status == 0, child.fail(f"exited with status {status}")
    assert "Traceback" not in child.output(), child.fail("printed a traceback")


def test_every_block_is_found_and_the_not_run_ones_are_listed() -> None:
    assert len(BLOCKS) >= 5, [block.id for block in BLOCKS]  # README's faces, chat.py, the service
    marked = {(str(block.document.relative_to(REPO)), block.code.splitlines()[0]) for block in BLOCKS
              if block.marker is not None}
    assert marked == NOT_RUN


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.marker is None],
                         ids=lambda block: block.id)
def test_block_runs_as_written(block: Block, launch: Launch, tmp_path: Path) -> None:
    broker = start_broker(launch)
    folder = tmp_path / "reader"
    folder.mkdir()
    script = folder / (block.module or "block.py")
    script.write_text(point_at(block.code, broker))
    headers = CLIENT_HEADERS.get(block.module or "", {})
    run_and_check(launch([script.name], name="block", cwd=folder), broker, block.code, headers, signal.SIGINT)
    for number, command in enumerate(block.commands):
        args = point_at(command, broker).split()[1:]
        run_and_check(launch([TWISTD, *args], name=f"twistd-{number}", cwd=folder), broker, command, headers,
                      signal.SIGTERM)
