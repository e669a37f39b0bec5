"""The README's "Scaling out" commands: the Redis URL only in the environment, and the --workers one runs as written."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, Supervisor

README = Path(ROOT) / "README.md"


def scaling_out_commands() -> list[str]:
    """The lines of the ```sh blocks of the README's "Scaling out" section."""
    text = README.read_text()
    section = text[text.index("### Scaling out"):]
    section = section[:section.index("\n## ")]
    return [line for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL) for line in block.splitlines()]


def test_scaling_out_gives_the_redis_url_only_through_the_environment() -> None:
    commands = scaling_out_commands()
    assert any("--workers" in command for command in commands)
    for command in commands:
        assert "--redis" not in command and "redis://" not in command.split("python", 1)[1], command
        assert command.startswith("PYSTRAND_REDIS_URL='redis://:"), command  # with a password: what it shows


def test_the_workers_command_runs_as_written_and_no_command_line_shows_the_url(redis_url: str) -> None:
    """The README's --workers command, with the test's Redis, python and free ports: every worker listens,
    and the URL is on no command line of the supervisor or its workers."""
    [command] = [each for each in scaling_out_commands() if "--workers" in each]
    assignment, python, *arguments = shlex.split(command)
    variable, _ = assignment.split("=", 1)
    assert python == "python"
    process = subprocess.Popen([sys.executable, *arguments, "--ws-port", "0", "--tcp-port", "0"], cwd=ROOT,
                               env={**os.environ, variable: redis_url}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        supervisor = Supervisor(process)
        assert supervisor.workers == int(arguments[arguments.index("--workers") + 1])
        for pid in [process.pid, *supervisor.worker_pids().values()]:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert "--workers" in command_line or "pystrands\x00worker" in command_line
            assert redis_url not in command_line and "redis://" not in command_line
        assert supervisor.stop(signal.SIGTERM) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
