"""The browser client's own tests (``js/test/``, Node's built-in test runner), run by pytest.

They drive ``pystrands/broker/pystrands.js`` against fakes and against real
broker processes started with this interpreter. Node 22+ has a WebSocket of
its own; Node 20 gets one with ``--experimental-websocket``; older Nodes
(Debian bookworm's 18) use the small client in ``js/support/websocket.mjs``.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node") or shutil.which("nodejs")
TIMEOUT = 240


def node_flags(node: str) -> list[str]:
    """``--experimental-websocket`` where it gives Node a WebSocket it lacks (Node 20)."""
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        if subprocess.run([node, *flags, "-e", probe], capture_output=True, timeout=30).returncode == 0:
            return flags
    return []


def test_node_suite_passes() -> None:
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed; CI must have it (.ci/run installs Debian's nodejs)")
        pytest.skip("node is not installed (apt-get install nodejs): the browser client's tests need it")
    files = sorted(str(path.relative_to(REPO)) for path in (REPO / "js" / "test").glob("*.test.mjs"))
    assert files, "no js/test/*.test.mjs files"
    command = [NODE, *node_flags(NODE), "--test", *files]
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYSTRAND_")}
    environment["PYSTRANDS_PYTHON"] = sys.executable
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=TIMEOUT)
    report = f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout, report


def test_the_client_ships_as_package_data() -> None:
    """A non-editable ``pip install`` must carry the file the broker serves."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    shipped = config["options.package_data"]["pystrands.broker"].split()
    assert "pystrands.js" in shipped
    assert (REPO / "pystrands" / "broker" / "pystrands.js").is_file()
