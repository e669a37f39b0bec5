"""The broker runs on the reactor it is given and never installs the global one."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, threading, urllib.request
    from twisted.internet.selectreactor import SelectReactor
    from pystrands.broker import BrokerConfig, BrokerService

    reactor = SelectReactor()
    config = BrokerConfig(ws_port=0, tcp_port=0, heartbeat_interval=0.05, static=sys.argv[1])
    service = BrokerService(config, reactor)
    pages = []

    def fetch(ports):
        try:
            pages.append(urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/", timeout=5).read())
        finally:
            reactor.callFromThread(lambda: service.stopService().addBoth(lambda _: reactor.stop()))

    reactor.callWhenRunning(service.startService)
    service.when_listening().addCallback(lambda ports: threading.Thread(target=fetch, args=(ports,)).start())
    reactor.callLater(20, reactor.stop)
    reactor.run(installSignalHandlers=False)
    print("page:", pages)
    print("global reactor installed:", "twisted.internet.reactor" in sys.modules)
""")


def test_a_private_reactor_serves_and_leaves_the_global_one_alone(tmp_path: pathlib.Path) -> None:
    page = b"<p>" + b"x" * 3_000_000 + b"</p>"  # bigger than a socket buffer: the writer must pause
    (tmp_path / "index.html").write_bytes(page)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"page: [{page!r}]" in result.stdout, result.stdout[-500:] + result.stderr
    assert "global reactor installed: False" in result.stdout, result.stdout + result.stderr
