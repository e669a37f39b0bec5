"""The broker runs on the reactor it is given and never installs the global one."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    from twisted.internet.selectreactor import SelectReactor
    from pystrands.broker import BrokerConfig, BrokerService

    reactor = SelectReactor()
    service = BrokerService(BrokerConfig(ws_port=0, tcp_port=0, heartbeat_interval=0.05), reactor)
    ports = []
    reactor.callWhenRunning(service.startService)
    service.when_listening().addCallback(ports.append)
    reactor.callLater(0.3, lambda: service.stopService().addBoth(lambda _: reactor.stop()))
    reactor.run(installSignalHandlers=False)
    assert ports and all(ports[0]), ports
    print("global reactor installed:", "twisted.internet.reactor" in sys.modules)
""")


def test_a_private_reactor_leaves_the_global_one_alone() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "global reactor installed: False" in result.stdout, result.stdout + result.stderr
